//! The checkpoints people use (issue 16): PlantCaduceus layout and vocabulary, pytorch_model.bin
//! written by torch.save (single, sharded, bf16), sharded safetensors, the Hugging Face cache,
//! Mamba-2 detection, and hostile .bin files. Fixtures: tests/reference/plantcad_ref.py (float64
//! expected values) and tests/reference/torch_save.py (the .bin files, written by torch 2.11).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dna-mamba"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).stdin(Stdio::null()).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn fixture(p: &str) -> String {
    fixtures().join(p).to_string_lossy().into_owned()
}

/// Rows of per-position CSV output: (id, values after `skip` fields).
fn rows(csv: &str, skip: usize) -> Vec<(String, Vec<f32>)> {
    csv.lines().skip(1).map(|l| {
        let f: Vec<&str> = l.split(',').collect();
        (f[0].to_string(), f[skip..].iter().map(|v| v.parse().unwrap()).collect())
    }).collect()
}

fn per_record(csv: &str, skip: usize) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> = Vec::new();
    for (id, v) in rows(csv, skip) {
        match out.last_mut() {
            Some((last, vals)) if *last == id => vals.extend(v),
            _ => out.push((id, v)),
        }
    }
    out
}

/// The PlantCaduceus-layout model (backbone. keys, vocab 8 from tokenizer.json, lowercase, N
/// and IUPAC read as [UNK]) matches the float64 reference: final hidden states and LM
/// log-probabilities, from model.safetensors and from every torch.save variant.
#[test]
fn plantcaduceus_layout_matches_the_reference() {
    let inputs = fixture("plantcad/inputs.fa");
    for (dir, tol) in [("plantcad", 1e-4), ("torch/plantcad/single", 1e-4), ("torch/plantcad/sharded", 1e-4), ("torch/plantcad/bf16", 3e-2)] {
        let m = fixture(dir);
        let hidden = per_record(&ok(&["embed", &inputs, "--model", &m, "--pool", "none", "--strand", "fwd", "-q"]), 2);
        let lp = per_record(&ok(&["embed", &inputs, "--model", &m, "--pool", "none", "--strand", "fwd", "--output", "logits", "-q"]), 2);
        assert_eq!(hidden.len(), 3);
        for ((id, h), (_, l)) in hidden.iter().zip(&lp) {
            let (_, want) = expected("plantcad", &format!("{id}.hidden"));
            let e = rel_err(h, &want);
            assert!(e < tol, "{dir} {id}: hidden off by {e:.2e}");
            let (_, want) = expected("plantcad", &format!("{id}.lp"));
            let e = rel_err(l, &want);
            assert!(e < tol, "{dir} {id}: log-probs off by {e:.2e}");
            eprintln!("{dir} {id}: hidden/logits within {tol:e} of the float64 reference");
        }
    }
}

/// The same weights give the same numbers whatever the files: .bin == safetensors (bit for
/// bit), sharded == single, for the Caduceus-vocabulary Ph model too.
#[test]
fn bin_and_sharded_files_equal_safetensors() {
    let inputs = fixture("inputs.fa");
    let want = ok(&["embed", &inputs, "--model", &fixture("ph"), "-q"]);
    for dir in ["torch/ph/single", "torch/ph/sharded"] {
        assert_eq!(ok(&["embed", &inputs, "--model", &fixture(dir), "-q"]), want, "{dir}");
    }
    let pc = fixture("plantcad/inputs.fa");
    let want = ok(&["embed", &pc, "--model", &fixture("plantcad"), "-q"]);
    for dir in ["torch/plantcad/single", "torch/plantcad/sharded"] {
        assert_eq!(ok(&["embed", &pc, "--model", &fixture(dir), "-q"]), want, "{dir}");
    }
    // sharded safetensors, written here from the single file
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures().join("ph/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (k, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        std::fs::write(tmp.path().join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        part.iter().for_each(|n| {
            map.insert(n.clone(), file.clone().into());
        });
    }
    std::fs::write(tmp.path().join("model.safetensors.index.json"), serde_json::json!({"metadata": {}, "weight_map": map}).to_string()).unwrap();
    std::fs::copy(fixtures().join("ph/config.json"), tmp.path().join("config.json")).unwrap();
    assert_eq!(ok(&["embed", &inputs, "--model", tmp.path().to_str().unwrap(), "-q"]), ok(&["embed", &inputs, "--model", &fixture("ph"), "-q"]));
}

/// The archive of a torch.save file with its data.pkl (or one entry) rewritten.
fn rewrite_bin(src: &Path, dst: &Path, edit: &dyn Fn(&str, Vec<u8>) -> Vec<u8>) {
    let mut z = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut w = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let name = f.name().unwrap().into_owned();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        w.start_file(&name, opts).unwrap();
        w.write_all(&edit(&name, data)).unwrap();
    }
    w.finish().unwrap();
}

/// Hostile .bin files: a pickle naming a foreign global, a storage shorter than its tensor, a
/// truncated archive, a legacy file: one clean error each, nothing executed.
#[test]
fn hostile_bin_files_fail_cleanly() {
    let src = fixtures().join("torch/ph/single");
    let tmp = tempfile::tempdir().unwrap();
    let make = |name: &str| -> PathBuf {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
        d
    };
    let bin = src.join("pytorch_model.bin");
    let marker = tmp.path().join("ran");
    let evil = make("evil");
    rewrite_bin(&bin, &evil.join("pytorch_model.bin"), &|name, data| {
        if !name.ends_with("data.pkl") {
            return data;
        }
        let from = b"ctorch._utils\n_rebuild_tensor_v2\n";
        let at = data.windows(from.len()).position(|w| w == from).expect("torch writes GLOBAL opcodes at protocol 2");
        [&data[..at], b"cos\nsystem\n", &data[at + from.len()..]].concat()
    });
    let o = run(&["info", "--model", evil.to_str().unwrap()]);
    assert_clean_failure(&o, "os.system", "names os.system");
    assert!(!marker.exists());

    let short = make("short");
    rewrite_bin(&bin, &short.join("pytorch_model.bin"), &|name, data| if name.ends_with("/data/0") { data[..data.len() - 4].to_vec() } else { data });
    assert_clean_failure(&run(&["info", "--model", short.to_str().unwrap()]), "short storage", "bytes, not");

    let cut = make("cut");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(cut.join("pytorch_model.bin"), &bytes[..bytes.len() / 3]).unwrap();
    assert_clean_failure(&run(&["info", "--model", cut.to_str().unwrap()]), "truncated zip", "pytorch_model.bin");

    let legacy = make("legacy");
    std::fs::write(legacy.join("pytorch_model.bin"), b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.").unwrap();
    assert_clean_failure(&run(&["info", "--model", legacy.to_str().unwrap()]), "legacy", "legacy (pre-1.6, non-zip)");
}

/// `--model owner/name` is found in the local Hugging Face cache (files are symlinks into
/// blobs/), never downloaded; a missing one says how to fetch it.
#[test]
fn repository_ids_resolve_in_the_local_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--kuleshov-group--PlantCaduceus_l20");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(hash)).unwrap();
    std::fs::write(repo.join("refs/main"), hash).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        let blob = repo.join("blobs").join(format!("blob-{f}"));
        std::fs::copy(fixtures().join("plantcad").join(f), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob-{f}"), repo.join("snapshots").join(hash).join(f)).unwrap();
    }
    let o = bin().args(["info", "--model", "kuleshov-group/PlantCaduceus_l20"]).env("HF_HUB_CACHE", cache.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains(hash) && text.contains("vocabulary: [PAD]=0 [MASK]=1 [UNK]=2 a=3"), "{text}");
    // model_max_length is Hugging Face's "unset" value there: the default context applies
    assert!(text.contains("context: 131072 bases"), "{text}");
    let o = bin().args(["info", "--model", "nobody/nothing"]).env("HF_HUB_CACHE", cache.path()).output().unwrap();
    assert_clean_failure(&o, "missing repo", "huggingface-cli download nobody/nothing");
}

/// Mamba-2 checkpoints are recognised by their tensor names and refused with a message.
#[test]
fn mamba2_checkpoints_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures().join("ph/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let d = st.tensor("caduceus.backbone.layers.0.mixer.mamba_fwd.D").unwrap();
    views.push(("caduceus.backbone.layers.0.mixer.mamba_fwd.dt_bias".into(), d));
    std::fs::write(tmp.path().join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    std::fs::copy(fixtures().join("ph/config.json"), tmp.path().join("config.json")).unwrap();
    assert_clean_failure(&run(&["info", "--model", tmp.path().to_str().unwrap()]), "mamba2", "Mamba-2 checkpoints");
}

/// A tokenizer.json that does not belong to the model (its A/T ids are not complements in the
/// model's map) is refused instead of scrambling the reverse strand.
#[test]
fn foreign_tokenizer_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("ph").join(f), tmp.path().join(f)).unwrap();
    }
    std::fs::copy(fixtures().join("plantcad/tokenizer.json"), tmp.path().join("tokenizer.json")).unwrap();
    assert_clean_failure(&run(&["info", "--model", tmp.path().to_str().unwrap()]), "foreign tokenizer", "do not belong together");
}

/// `score-variants --scores plantcad` matches the float64 reference's PlantCaduceus zero-shot
/// score for every variant, the ones whose window runs past either end of the sequence
/// included, from the safetensors and the torch.save files.
#[test]
fn plantcad_zero_shot_scores_match_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = std::fs::read_to_string(fixtures().join("plantcad/inputs.fa")).unwrap();
    let chr1 = inputs.split('>').find(|r| r.starts_with("chr1\n")).unwrap();
    let seq = chr1.lines().nth(1).unwrap();
    let fa = tmp.path().join("chr1.fa");
    let wrapped: Vec<&str> = seq.as_bytes().chunks(60).map(|c| std::str::from_utf8(c).unwrap()).collect();
    std::fs::write(&fa, format!(">chr1\n{}\n", wrapped.join("\n"))).unwrap();
    ok(&["faidx", fa.to_str().unwrap()]);
    let variants = std::fs::read_to_string(fixtures().join("plantcad/variants.tsv")).unwrap();
    let mut vcf = String::from("##fileformat=VCFv4.2\n##contig=<ID=chr1,length=700>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n");
    for l in variants.lines().skip(1) {
        let f: Vec<&str> = l.split('\t').collect();
        vcf.push_str(&format!("chr1\t{}\t.\t{}\t{}\t.\t.\t.\n", f[0], f[1], f[2]));
    }
    let vcf_path = tmp.path().join("v.vcf");
    std::fs::write(&vcf_path, vcf).unwrap();
    let (_, want) = expected("plantcad", "chr1.plantcad");
    for dir in ["plantcad", "torch/plantcad/single"] {
        let out = ok(&["score-variants", "--vcf", vcf_path.to_str().unwrap(), "--fasta", fa.to_str().unwrap(), "--model", &fixture(dir), "--scores", "plantcad", "--format", "tsv", "-q"]);
        let header: Vec<&str> = out.lines().next().unwrap().split('\t').collect();
        let col = header.iter().position(|h| *h == "plantcad").unwrap();
        let got: Vec<f32> = out.lines().skip(1).map(|l| l.split('\t').nth(col).unwrap().parse().unwrap()).collect();
        assert_eq!(got.len(), want.len());
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{dir}: plantcad scores off by {worst:.2e}: {got:?} vs {want:?}");
        eprintln!("{dir}: {} PlantCaduceus scores within {worst:.1e} of the float64 reference", got.len());
    }
}

/// `embed --layers i` gives the residual stream after block i (0: the embeddings) as the
/// float64 reference computes it, for every layer of the PlantCaduceus fixture, through the
/// per-position and pooled outputs.
#[test]
fn layers_match_the_reference() {
    let inputs = fixture("plantcad/inputs.fa");
    let m = fixture("plantcad");
    for layer in 0..=3 {
        let out = per_record(&ok(&["embed", &inputs, "--model", &m, "--pool", "none", "--strand", "fwd", "--layers", &layer.to_string(), "-q"]), 2);
        for (id, h) in out.iter().filter(|(id, _)| id != "chr1") {
            let (_, want) = expected("plantcad", &format!("{id}.layer{layer}"));
            let e = rel_err(h, &want);
            assert!(e < 1e-4, "layer {layer} {id}: off by {e:.2e}");
            eprintln!("layer {layer} {id}: within {e:.1e} of the float64 reference");
        }
        // the pooled row is the mean of the per-position rows
        let pooled = rows(&ok(&["embed", &inputs, "--model", &m, "--strand", "fwd", "--layers", &layer.to_string(), "-q"]), 2);
        let (_, want) = expected("plantcad", &format!("mixed.layer{layer}"));
        let width = pooled[1].1.len();
        let mean: Vec<f32> = (0..width).map(|c| want.chunks(width).map(|r| r[c]).sum::<f32>() / (want.len() / width) as f32).collect();
        assert!(rel_err(&pooled[1].1, &mean) < 1e-4, "layer {layer} pooled");
    }
    let o = run(&["embed", &inputs, "--model", &m, "--layers", "4"]);
    assert_clean_failure(&o, "past the last layer", "layers 0 (embeddings) to 3");
}

/// Several layers from one pass: `--layers 3,0,2` (any order, ascending in the output) gives
/// the columns `l0.e*`, `l2.e*`, `l3.e*`, each block matching the float64 reference for its
/// layer; pooled with `--strand both` (the PS fixture folds each layer's halves) each block is
/// exactly the single-layer run's row; npy and safetensors get one array per layer (`ID.lL`).
#[test]
fn several_layers_in_one_pass() {
    let inputs = fixture("plantcad/inputs.fa");
    let m = fixture("plantcad");
    let csv = ok(&["embed", &inputs, "--model", &m, "--pool", "none", "--strand", "fwd", "--layers", "3,0,2", "-q"]);
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let width = (header.len() - 2) / 3;
    assert_eq!(header[2], "l0.e0");
    assert_eq!(header[2 + width], "l2.e0");
    assert_eq!(header[2 + 2 * width], "l3.e0");
    assert_eq!(header.last(), Some(&format!("l3.e{}", width - 1).as_str()));
    for (id, v) in per_record(&csv, 2).iter().filter(|(id, _)| id != "chr1") {
        for (k, layer) in [0, 2, 3].into_iter().enumerate() {
            let block: Vec<f32> = v.chunks(3 * width).flat_map(|r| r[k * width..(k + 1) * width].to_vec()).collect();
            let (_, want) = expected("plantcad", &format!("{id}.layer{layer}"));
            let e = rel_err(&block, &want);
            assert!(e < 1e-4, "layer {layer} of --layers 3,0,2, {id}: off by {e:.2e}");
        }
    }
    let both = rows(&ok(&["embed", &inputs, "--model", &m, "--strand", "both", "--layers", "1,3", "-q"]), 2);
    for (k, layer) in ["1", "3"].into_iter().enumerate() {
        let one = rows(&ok(&["embed", &inputs, "--model", &m, "--strand", "both", "--layers", layer, "-q"]), 2);
        for ((id, v), (id1, v1)) in both.iter().zip(&one) {
            assert_eq!(id, id1);
            assert_eq!(&v[k * v1.len()..(k + 1) * v1.len()], &v1[..], "pooled layer {layer} of --layers 1,3, {id}");
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let st_path = tmp.path().join("h.safetensors");
    ok(&["embed", &inputs, "--model", &m, "--pool", "none", "--strand", "fwd", "--layers", "0,2", "--format", "safetensors", "-o", st_path.to_str().unwrap(), "-q"]);
    let bytes = std::fs::read(&st_path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<String> = per_record(&csv, 2).into_iter().map(|(id, _)| id).collect();
    assert_eq!(st.len(), 2 * ids.len());
    for id in ids.iter().filter(|id| *id != "chr1") {
        for layer in [0, 2] {
            let t = st.tensor(&format!("{id}.l{layer}")).unwrap();
            let got: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            let (shape, want) = expected("plantcad", &format!("{id}.layer{layer}"));
            assert_eq!(t.shape(), &shape[..]);
            assert!(rel_err(&got, &want) < 1e-4, "safetensors {id}.l{layer}");
        }
    }
    let npy = tmp.path().join("npy");
    ok(&["embed", &inputs, "--model", &m, "--pool", "none", "--layers", "0,2", "--format", "npy", "-o", npy.to_str().unwrap(), "-q"]);
    let index = std::fs::read_to_string(npy.join("index.csv")).unwrap();
    assert_eq!(index.lines().count(), 1 + 2 * ids.len(), "{index}");
    assert!(index.lines().any(|l| l.starts_with(&format!("{}.l2,", ids[0]))), "{index}");
}
