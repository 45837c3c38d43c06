//! Issue 14, model and feature items: config.json values that make the math undefined (7),
//! the strand join of `--output logits` (8), sizes checked against the weights file and the
//! feature-size cap of `train --pool bins:N` (14), and feature files validated on load (15).
//! Every crafted model folder and feature file is made inside a temporary directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use dna_mamba::backend::cpu::Cpu;
use dna_mamba::embed::{Embedder, Feature, Strand};
use dna_mamba::variants::{Scorer, Window};
use serde_json::{json, Value};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dna-mamba"))
}

fn run_bin(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A copy of fixture model `name` in `dir/folder` whose config.json is `edit`ed.
fn crafted_model(dir: &Path, folder: &str, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let src = fixtures().join(name);
    let out = dir.join(folder);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("model.safetensors"), out.join("model.safetensors")).unwrap();
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    out
}

/// `embed` with model `model` fails with one error line naming config.json and `needle`,
/// and writes nothing on stdout.
fn embed_refuses(dir: &Path, model: &Path, needle: &str) {
    let fa = dir.join("in.fa");
    std::fs::write(&fa, ">a\nACGTACGTAAACCCGGGTTT\n").unwrap();
    let o = run_bin(&["embed", "-q", "--device", "cpu", "-m", &s(model), &s(&fa)]);
    let what = format!("embed -m {}", model.display());
    assert_clean_failure(&o, &what, needle);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config.json"), "{what}: the error does not name config.json: {err}");
    assert!(o.stdout.is_empty(), "{what}: wrote output: {}", String::from_utf8_lossy(&o.stdout));
}

// ---- item 7: config values that make the math undefined ----------------------------------

#[test]
fn config_values_that_break_the_math_are_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Box<dyn FnOnce(&mut Value)>, &str)> = vec![
        ("eps_negative", Box::new(|c| c["norm_epsilon"] = json!(-1.0)), "norm_epsilon"),
        ("eps_zero", Box::new(|c| c["norm_epsilon"] = json!(0)), "norm_epsilon"),
        // finite in f64, infinite in the f32 the forward pass computes with
        ("eps_f32_inf", Box::new(|c| c["norm_epsilon"] = json!(1e300)), "norm_epsilon"),
        ("eps_string", Box::new(|c| c["norm_epsilon"] = json!("1e-5")), "norm_epsilon"),
        ("d_model_zero", Box::new(|c| c["d_model"] = json!(0)), "d_model"),
        ("d_model_string", Box::new(|c| c["d_model"] = json!("24")), "d_model"),
        ("d_model_negative", Box::new(|c| c["d_model"] = json!(-24)), "d_model"),
        ("d_model_missing", Box::new(|c| { c.as_object_mut().unwrap().remove("d_model"); }), "d_model is missing"),
        ("n_layer_zero", Box::new(|c| c["n_layer"] = json!(0)), "n_layer"),
        ("vocab_zero", Box::new(|c| c["vocab_size"] = json!(0)), "vocab_size"),
        ("vocab_fraction", Box::new(|c| c["vocab_size"] = json!(16.5)), "vocab_size"),
        ("pad_absurd", Box::new(|c| c["pad_vocab_size_multiple"] = json!(1e30)), "pad_vocab_size_multiple"),
        ("d_state_zero", Box::new(|c| c["ssm_cfg"]["d_state"] = json!(0)), "ssm_cfg.d_state"),
        ("d_conv_negative", Box::new(|c| c["ssm_cfg"]["d_conv"] = json!(-4)), "ssm_cfg.d_conv"),
        ("expand_zero", Box::new(|c| c["ssm_cfg"]["expand"] = json!(0)), "ssm_cfg.expand"),
        ("dt_rank_zero", Box::new(|c| c["ssm_cfg"]["dt_rank"] = json!(0)), "ssm_cfg.dt_rank"),
        ("rcps_string", Box::new(|c| c["rcps"] = json!("no")), "rcps"),
    ];
    for (folder, edit, needle) in cases {
        let m = crafted_model(dir.path(), folder, "ph", edit);
        embed_refuses(dir.path(), &m, needle);
    }
}

#[test]
fn a_number_beyond_f64_in_config_json_is_refused_with_its_line() {
    // JSON has no infinity; 1e999 is how one is written by hand, and serde_json refuses it
    let dir = tempfile::tempdir().unwrap();
    let m = crafted_model(dir.path(), "eps_inf", "ph", |c| c["norm_epsilon"] = json!("EPS"));
    let text = std::fs::read_to_string(m.join("config.json")).unwrap().replace("\"EPS\"", "1e999");
    std::fs::write(m.join("config.json"), text).unwrap();
    embed_refuses(dir.path(), &m, "out of range at line");
}

#[test]
fn the_fixture_config_still_loads_after_a_round_trip() {
    // the crafting itself changes nothing: the same config written back loads and runs
    let dir = tempfile::tempdir().unwrap();
    let m = crafted_model(dir.path(), "same", "ph", |_| {});
    let fa = dir.path().join("in.fa");
    std::fs::write(&fa, ">a\nACGTACGTAAACCCGGGTTT\n").unwrap();
    let o = run_bin(&["embed", "-q", "--device", "cpu", "-m", &s(&m), &s(&fa)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(!out.contains("nan"), "{out}");
}

// ---- item 14: sizes against the weights file; the feature-size cap -----------------------

#[test]
fn config_sizes_are_checked_against_the_weights_file_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, &str, Box<dyn FnOnce(&mut Value)>, &str)> = vec![
        // these two aborted in the allocator (exit 134, backtrace)
        ("n_layer_1e9", "ph", Box::new(|c| c["n_layer"] = json!(1_000_000_000u64)), "n_layer"),
        ("vocab_1e12", "ph", Box::new(|c| c["vocab_size"] = json!(1_000_000_000_000u64)), "vocab_size"),
        // within the config's limits, but not what the file holds
        ("n_layer_1000", "ph", Box::new(|c| c["n_layer"] = json!(1000)), "n_layer is 1000, but"),
        ("n_layer_fewer", "ph", Box::new(|c| c["n_layer"] = json!(2)), "holds layers 0 to 2"),
        ("vocab_1e6", "ph", Box::new(|c| {
            c["vocab_size"] = json!(1_000_000);
            c.as_object_mut().unwrap().remove("complement_map");
        }), "vocab_size 1000000 (padded to a multiple of 8: 1000000) does not match"),
        ("vocab_more_than_map", "ph", Box::new(|c| c["vocab_size"] = json!(1_000_000)), "complement_map has 16 entries"),
        ("d_model_32", "ph", Box::new(|c| c["d_model"] = json!(32)), "d_model 32 does not match"),
        ("d_state_8", "ph", Box::new(|c| c["ssm_cfg"]["d_state"] = json!(8)), "ssm_cfg.d_state"),
        ("d_conv_3", "ph", Box::new(|c| c["ssm_cfg"]["d_conv"] = json!(3)), "ssm_cfg.d_conv"),
        ("expand_3", "ph", Box::new(|c| c["ssm_cfg"]["expand"] = json!(3)), "ssm_cfg.expand"),
        ("dt_rank_5", "ph", Box::new(|c| c["ssm_cfg"]["dt_rank"] = json!(5)), "ssm_cfg.dt_rank"),
        ("ps_n_layer", "ps", Box::new(|c| c["n_layer"] = json!(40_000)), "n_layer is 40000"),
    ];
    for (folder, name, edit, needle) in cases {
        let m = crafted_model(dir.path(), folder, name, edit);
        embed_refuses(dir.path(), &m, needle);
    }
}

/// 40 short labelled reads (two labels) in `dir/reads.fa`.
fn labelled_reads(dir: &Path) -> PathBuf {
    let mut fa = String::new();
    for i in 0..40 {
        let seq = String::from_utf8(random_dna(30, 500 + i)).unwrap();
        fa.push_str(&format!(">r{i} label={}\n{seq}\n", ["x", "y"][i as usize % 2]));
    }
    let p = dir.join("reads.fa");
    std::fs::write(&p, fa).unwrap();
    p
}

#[test]
fn train_refuses_bins_whose_features_exceed_one_gib() {
    let dir = tempfile::tempdir().unwrap();
    let reads = labelled_reads(dir.path());
    let head = dir.path().join("head.safetensors");
    let model = s(&fixtures().join("ph"));
    // 10^15 bins × 24 values: the pools could never be allocated
    for bins in ["bins:1000000000000000", "bins:300000"] {
        let o = run_bin(&["train", "-q", "--device", "cpu", "-m", &model, "--level", "read", "--pool", bins, "-o", &s(&head), &s(&reads)]);
        assert_clean_failure(&o, bins, &format!("--pool {bins}"));
        let err = String::from_utf8_lossy(&o.stderr);
        // 40 rows × 24 values × 4 bytes: at most 2^30 / 3840 bins
        assert!(err.contains("over the limit of 1 GiB") && err.contains("at most bins:279620"), "{err}");
        assert!(!head.exists(), "{bins}: a head was written");
    }
    // the largest allowed size passes the check (and a small one trains)
    let o = run_bin(&["train", "-q", "--device", "cpu", "-m", &model, "--level", "read", "--pool", "bins:3", "-o", &s(&head), &s(&reads)]);
    assert!(o.status.success(), "bins:3: {}", String::from_utf8_lossy(&o.stderr));
    assert!(head.exists());
}

// ---- item 15: feature files validated on load --------------------------------------------

/// A feature file as `train --save-features` writes it, with every part given.
struct FeatureFile {
    dim: usize,
    labels: Vec<&'static str>,
    x_train: (Vec<usize>, Vec<f32>),
    y_train: (Vec<usize>, Vec<u32>),
    x_test: (Vec<usize>, Vec<f32>),
    y_test: (Vec<usize>, Vec<u32>),
    /// dtype of the y tensors
    y_dtype: safetensors::Dtype,
}

impl FeatureFile {
    /// A valid file: `n` rows per split of `dim` values, labels alternating.
    fn valid(n: usize, dim: usize) -> Self {
        let x: Vec<f32> = (0..n * dim).map(|i| ((i * 7919) % 101) as f32 / 50.0 + (i / dim % 2) as f32).collect();
        let y: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
        FeatureFile {
            dim,
            labels: vec!["x", "y"],
            x_train: (vec![n, dim], x.clone()),
            y_train: (vec![n], y.clone()),
            x_test: (vec![n, dim], x),
            y_test: (vec![n], y),
            y_dtype: safetensors::Dtype::U32,
        }
    }

    fn write(&self, path: &Path) {
        use safetensors::tensor::TensorView;
        let xb = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|f| f.to_le_bytes()).collect() };
        let yb = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|f| f.to_le_bytes()).collect() };
        let bufs = [xb(&self.x_train.1), yb(&self.y_train.1), xb(&self.x_test.1), yb(&self.y_test.1)];
        let views = vec![
            ("x_train", TensorView::new(safetensors::Dtype::F32, self.x_train.0.clone(), &bufs[0]).unwrap()),
            ("y_train", TensorView::new(self.y_dtype, self.y_train.0.clone(), &bufs[1]).unwrap()),
            ("x_test", TensorView::new(safetensors::Dtype::F32, self.x_test.0.clone(), &bufs[2]).unwrap()),
            ("y_test", TensorView::new(self.y_dtype, self.y_test.0.clone(), &bufs[3]).unwrap()),
        ];
        let doc = json!({
            "labels": self.labels,
            "features": {"source": "kmer", "strand": "both", "pooling": "mean", "k": [1], "dim": self.dim},
            "backbone": null, "context": null, "data": {"crafted": true},
        });
        let meta = std::collections::HashMap::from([("dna_mamba_features".to_string(), doc.to_string())]);
        std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    }
}

fn load_features(dir: &Path, f: &FeatureFile) -> Output {
    let p = dir.join("features.safetensors");
    f.write(&p);
    run_bin(&["train", "-q", "--level", "read", "--load-features", &s(&p), "-o", &s(&dir.join("head.safetensors"))])
}

#[test]
fn feature_files_are_validated_on_load() {
    let dir = tempfile::tempdir().unwrap();
    // the crafted format is right: a valid file trains
    let o = load_features(dir.path(), &FeatureFile::valid(20, 3));
    assert!(o.status.success(), "valid feature file: {}", String::from_utf8_lossy(&o.stderr));

    let cases: Vec<(&str, FeatureFile, &str)> = vec![
        // panicked in heads/fit.rs (chunk size must be non-zero)
        ("dim 0", FeatureFile { x_train: (vec![20, 0], vec![]), x_test: (vec![20, 0], vec![]), ..FeatureFile::valid(20, 0) }, "dim 0"),
        ("x wider than dim", FeatureFile { dim: 2, ..FeatureFile::valid(20, 3) }, "x_train has shape [20, 3], expected [20, 2]"),
        ("fewer x rows than labels", FeatureFile { y_train: (vec![21], vec![0; 21]), ..FeatureFile::valid(20, 3) }, "expected [21, 3]"),
        ("flat x", {
            let mut f = FeatureFile::valid(20, 3);
            f.x_test.0 = vec![60];
            f
        }, "x_test has shape [60]"),
        ("label out of range", {
            let mut f = FeatureFile::valid(20, 3);
            f.y_test.1[7] = 5;
            f
        }, "y_test row 7 has label index 5"),
        ("NaN feature", {
            let mut f = FeatureFile::valid(20, 3);
            f.x_train.1[3 * 4 + 2] = f32::NAN;
            f
        }, "x_train row 4 column 2 is not finite"),
        ("infinite feature", {
            let mut f = FeatureFile::valid(20, 3);
            f.x_test.1[0] = f32::INFINITY;
            f
        }, "x_test row 0 column 0 is not finite"),
        ("float labels", FeatureFile { y_dtype: safetensors::Dtype::F32, ..FeatureFile::valid(20, 3) }, "expected U32"),
        ("one label", FeatureFile { labels: vec!["x"], ..FeatureFile::valid(20, 3) }, "at least two"),
    ];
    for (what, f, needle) in cases {
        let o = load_features(dir.path(), &f);
        assert_clean_failure(&o, what, needle);
        assert!(String::from_utf8_lossy(&o.stderr).contains("features.safetensors"), "{what}: the error does not name the file");
    }
}

#[test]
fn a_feature_file_with_bad_metadata_is_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("features.safetensors");
    FeatureFile::valid(4, 2).write(&p);
    // rewrite the metadata: features.dim as a string
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let bad = header.replace("\\\"dim\\\":2", "\\\"dim\\\":\\\"2\\\"");
    assert_ne!(bad, header, "the metadata holds no dim");
    let mut bad = bad.into_bytes();
    bad.resize(n.max(bad.len()).next_multiple_of(8), b' ');
    let mut out = (bad.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&bad);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
    let o = run_bin(&["train", "-q", "--level", "read", "--load-features", &s(&p), "-o", &s(&dir.path().join("h.safetensors"))]);
    assert_clean_failure(&o, "dim as a string", "metadata field features");
}

// ---- item 8: logits of both strands are a distribution ------------------------------------

fn log_mean_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    m + (0.5 * ((a - m).exp() + (b - m).exp())).ln()
}

#[test]
fn both_strand_log_probs_are_the_log_of_the_mean_probability() {
    for name in ["ph", "causal", "ps"] {
        let model = load(name);
        for (len, seed) in [(1usize, 3u64), (37, 4), (300, 5)] {
            let seq = random_dna(len, seed);
            for linear in [false, true] {
                let both = run(&model, &seq, Strand::Both, Feature::Logits, 64, true, 1 << 20, 0, linear);
                let fwd = run(&model, &seq, Strand::Fwd, Feature::Logits, 64, true, 1 << 20, 0, linear);
                let rc = run(&model, &seq, Strand::Rc, Feature::Logits, 64, true, 1 << 20, 0, linear);
                for l in 0..len {
                    let row = &both[l * 4..][..4];
                    let total: f64 = row.iter().map(|v| (*v as f64).exp()).sum();
                    assert!((total - 1.0).abs() < 1e-5, "{name} len {len} pos {l} linear {linear}: exp sums to {total}");
                    for b in 0..4 {
                        let want = log_mean_exp(fwd[l * 4 + b] as f64, rc[l * 4 + b] as f64);
                        let got = row[b] as f64;
                        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{name} len {len} pos {l} base {b}: {got} vs {want}");
                    }
                }
            }
        }
    }
}

#[test]
fn both_strand_log_probs_are_rc_invariant_and_tiled_the_same() {
    let model = load("ph");
    let seq = random_dna(257, 9);
    let rc_seq: Vec<u8> = seq.iter().rev().map(|b| match b { b'A' => b'T', b'C' => b'G', b'G' => b'C', _ => b'A' }).collect();
    let a = run(&model, &seq, Strand::Both, Feature::Logits, 64, true, 1 << 20, 0, false);
    let b = run(&model, &rc_seq, Strand::Both, Feature::Logits, 64, true, 1 << 20, 0, false);
    let n = seq.len();
    for l in 0..n {
        for k in 0..4 {
            let (x, y) = (a[l * 4 + k], b[(n - 1 - l) * 4 + 3 - k]);
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "pos {l} base {k}: {x} vs {y}");
        }
    }
    // tiles (context 100, overlap 20): each tile's first pass is held until its second
    for linear in [false, true] {
        let tiled = run(&model, &seq, Strand::Both, Feature::Logits, 64, true, 100, 20, linear);
        let fwd = run(&model, &seq, Strand::Fwd, Feature::Logits, 64, true, 100, 20, linear);
        let rc = run(&model, &seq, Strand::Rc, Feature::Logits, 64, true, 100, 20, linear);
        for i in 0..tiled.len() {
            let want = log_mean_exp(fwd[i] as f64, rc[i] as f64);
            assert!((tiled[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "tiled, linear {linear}, value {i}: {} vs {want}", tiled[i]);
        }
    }
}

#[test]
fn cli_logits_of_both_strands_sum_to_one() {
    let dir = tempfile::tempdir().unwrap();
    let fa = dir.path().join("in.fa");
    std::fs::write(&fa, format!(">a\n{}\n>b\nACGTNNACGT\n", String::from_utf8(random_dna(90, 11)).unwrap())).unwrap();
    let o = run_bin(&["embed", "-q", "--device", "cpu", "-m", &s(&fixtures().join("ph")), "--output", "logits", "--strand", "both", "--pool", "none", &s(&fa)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let mut rows = 0;
    for line in out.lines().skip(1) {
        let total: f64 = line.split(',').skip(2).map(|v| v.parse::<f64>().unwrap().exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{line}: exp sums to {total}");
        rows += 1;
    }
    assert_eq!(rows, 100);
}

#[test]
fn score_variants_keeps_strand_averaged_log_ratios() {
    // the masked LLR is the mean of the two strands' log-ratios, not a log-ratio of the
    // strand-mean probabilities
    let model = load("ph");
    let mut tokens = tokens(&random_dna(61, 21));
    let (center, ref_col) = (30, 1);
    tokens[center] = dna_mamba::tokenizer::ACGT[ref_col];
    let w = Window { tokens: tokens.clone(), center, ref_col, alt_cols: vec![0, 2, 3] };
    let emb = Embedder::new(Cpu::new(model.clone()), model.clone(), Strand::Both, Feature::Logits, 4096, 0).unwrap();
    let mut scorer = Scorer::new(emb, 61, 21);
    let got = scorer.masked_llr(std::slice::from_ref(&w)).unwrap();
    let mut masked = tokens.clone();
    masked[center] = mask_id();
    let per_strand = |strand: Strand| -> Vec<f32> {
        let mut e = Embedder::new(Cpu::new(model.clone()), model.clone(), strand, Feature::Logits, 4096, 0).unwrap();
        let mut c = Collect::new(masked.len(), 4, false);
        e.record(&masked, &mut c, &mut |_| {}).unwrap();
        c.rows[center * 4..][..4].to_vec()
    };
    let (f, r) = (per_strand(Strand::Fwd), per_strand(Strand::Rc));
    let mut differs = false;
    for (j, &a) in w.alt_cols.iter().enumerate() {
        let want = 0.5 * ((f[a] - f[ref_col]) + (r[a] - r[ref_col]));
        let mean_prob = |b: usize| log_mean_exp(f[b] as f64, r[b] as f64);
        let other = (mean_prob(a) - mean_prob(ref_col)) as f32;
        differs |= (other - want).abs() > 1e-3;
        assert!((got[0][j] - want).abs() <= 1e-5 * (1.0 + want.abs()), "alt {j}: {} vs {want}", got[0][j]);
    }
    assert!(differs, "the two strand joins agree here: the test cannot tell them apart");
}
