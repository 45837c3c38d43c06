//! score-variants end to end: strand symmetry, skipped records, VCF output.

mod common;

use std::process::Command;

use common::*;

fn revcomp(s: &[u8]) -> Vec<u8> {
    s.iter().rev().map(|b| match b { b'A' => b'T', b'C' => b'G', b'G' => b'C', b'T' => b'A', x => *x }).collect()
}

/// A reference with `c` and its reverse complement `c_rc`, each variant written on both.
fn setup(dir: &std::path::Path) -> (String, String) {
    let s = random_dna(2500, 21);
    let rc = revcomp(&s);
    let wrap = |x: &[u8]| x.chunks(60).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\n");
    let fa = dir.join("ref.fa");
    std::fs::write(&fa, format!(">c\n{}\n>c_rc\n{}\n", wrap(&s), wrap(&rc))).unwrap();
    let comp = |b: u8| revcomp(&[b])[0] as char;
    let mut vcf = String::from("##fileformat=VCFv4.2\n##contig=<ID=c,length=2500>\n##contig=<ID=c_rc,length=2500>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n");
    for (i, p) in [1usize, 2, 300, 1250, 1251, 2499, 2500].iter().enumerate() {
        let r = s[p - 1];
        let alt = *b"ACGT".iter().filter(|&&b| b != r).nth(i % 3).unwrap();
        vcf += &format!("c\t{p}\t.\t{}\t{}\t.\tPASS\t.\n", r as char, alt as char);
        vcf += &format!("c_rc\t{}\t.\t{}\t{}\t.\tPASS\t.\n", 2500 - p + 1, comp(r), comp(alt));
    }
    let wrong = if s[9] == b'A' { 'C' } else { 'A' };
    vcf += &format!("c\t10\t.\t{wrong}\tG\t.\tPASS\t.\n");
    vcf += "c\t20\t.\tA\tAT\t.\tPASS\t.\n";
    let v = dir.join("v.vcf");
    std::fs::write(&v, vcf).unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_dna-mamba")).arg("faidx").arg(&fa).status().unwrap();
    assert!(st.success());
    (fa.to_string_lossy().into_owned(), v.to_string_lossy().into_owned())
}

fn score(fa: &str, vcf: &str, model: &str, format: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_dna-mamba"))
        .args(["score-variants", "--vcf", vcf, "--fasta", fa, "-m", &fixtures().join(model).to_string_lossy(), "-q"])
        .args(["--format", format, "--context", "700", "--score-context", "101", "--embed-window", "31"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn a_variant_and_its_reverse_complement_score_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, vcf) = setup(dir.path());
    for m in ["ph", "ps"] {
        let out = score(&fa, &vcf, m, "tsv");
        let rows: Vec<Vec<&str>> = out.lines().skip(1).map(|l| l.split('\t').collect()).collect();
        assert_eq!(rows.len(), 16);
        let scored: Vec<&Vec<&str>> = rows.iter().filter(|r| r[5] == "scored").collect();
        assert_eq!(scored.len(), 14);
        for pair in scored.chunks(2) {
            let (a, b) = (pair[0], pair[1]);
            for k in 6..10 {
                let (x, y): (f32, f32) = (a[k].parse().unwrap(), b[k].parse().unwrap());
                assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{m} {a:?} vs {b:?}: column {k}");
            }
            // the scores are not all zero: a change at the variant matters
            assert!(a[6].parse::<f32>().unwrap().abs() > 1e-3);
        }
        assert!(rows[14][11].contains("disagrees with the FASTA"), "{:?}", rows[14]);
        assert!(rows[15][11].contains("not an SNV"), "{:?}", rows[15]);
    }
}

#[test]
fn vcf_output_keeps_records_and_describes_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, vcf) = setup(dir.path());
    let out = score(&fa, &vcf, "ph", "vcf");
    assert!(out.contains("##INFO=<ID=DNAM_LLR,Number=A,Type=Float"));
    assert!(out.contains("##INFO=<ID=DNAM_SKIP"));
    let recs: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(recs.len(), 16, "every input record comes out");
    assert!(recs[..14].iter().all(|r| r.contains("DNAM_LLR=") && r.contains("DNAM_MLLR=") && r.contains("DNAM_COS=")));
    assert!(recs[14].contains("DNAM_SKIP=REF_"));
}

#[test]
fn unindexed_reference_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let fa = dir.path().join("x.fa");
    std::fs::write(&fa, ">x\nACGT\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dna-mamba"))
        .args(["score-variants", "--vcf", "nope.vcf", "--fasta", fa.to_str().unwrap(), "-m", &fixtures().join("ph").to_string_lossy()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("faidx") && !err.contains("panicked"), "{err}");
}

/// With the built-in model: in a (CA)n repeat the model is sure of the next base, so changing
/// one is strongly disfavoured, masked or not.
#[test]
fn a_change_the_model_is_sure_about_scores_strongly_negative() {
    let dir = tempfile::tempdir().unwrap();
    let s: String = "CA".repeat(600);
    let fa = dir.path().join("rep.fa");
    std::fs::write(&fa, format!(">rep\n{s}\n")).unwrap();
    let vcf = dir.path().join("v.vcf");
    std::fs::write(&vcf, "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\nrep\t601\t.\tC\tG\t.\t.\t.\nrep\t602\t.\tA\tT\t.\t.\t.\n").unwrap();
    let bin = env!("CARGO_BIN_EXE_dna-mamba");
    assert!(Command::new(bin).arg("faidx").arg(&fa).status().unwrap().success());
    let o = Command::new(bin)
        .args(["score-variants", "--vcf", vcf.to_str().unwrap(), "--fasta", fa.to_str().unwrap(), "--device", "cpu"])
        .args(["--format", "tsv", "--scores", "llr,mllr", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for row in String::from_utf8(o.stdout).unwrap().lines().skip(1) {
        let f: Vec<&str> = row.split('\t').collect();
        let (llr, mllr): (f32, f32) = (f[6].parse().unwrap(), f[7].parse().unwrap());
        assert!(llr < -3.0 && mllr < -3.0, "{row}");
    }
}

/// The batched per-variant scores (`Scorer::masked_llr`, `Scorer::embedding_distance`, which
/// run all windows of a batch through `Embedder::rows_at` / `range_sums`) against each window
/// computed alone through `Embedder::record` (the path checked against the numpy reference):
/// windows of different lengths, centres at the edges, several alternates.
#[test]
fn batched_window_scores_match_each_window_alone() {
    use dna_mamba::backend::cpu::Cpu;
    use dna_mamba::embed::{Embedder, Feature, Strand};
    use dna_mamba::variants::{Scorer, Window};

    for m in ["ph", "ps"] {
        let model = load(m);
        let d = model.config.d_model;
        let windows: Vec<Window> = [(101usize, 50usize, 0usize, vec![1usize, 2, 3]), (51, 0, 2, vec![0]), (77, 76, 3, vec![1, 0]), (1, 0, 1, vec![2])]
            .into_iter()
            .enumerate()
            .map(|(i, (len, center, ref_col, alt_cols))| {
                let mut tokens = tokens(&random_dna(len, 40 + i as u64));
                tokens[center] = dna_mamba::tokenizer::ACGT[ref_col];
                Window { tokens, center, ref_col, alt_cols }
            })
            .collect();
        // the same site again (another ALT, and an exact repeat): shared windows run once
        let mut windows = windows;
        windows.push(Window { alt_cols: vec![2], ..windows[0].clone() });
        windows.push(windows[2].clone());
        let emb = Embedder::new(Cpu::new(model.clone()), model.clone(), Strand::Both, Feature::Logits, 4096, 0).unwrap();
        let (score_context, embed_window) = (101, 31);
        let mut scorer = Scorer::new(emb, score_context, embed_window);
        let mllr = scorer.masked_llr(&windows).unwrap();
        let dist = scorer.embedding_distance(&windows).unwrap();

        for (k, w) in windows.iter().enumerate() {
            // masked: log-probs of the whole masked window, one record
            let mut t = w.tokens.clone();
            t[w.center] = mask_id();
            let lp = scorer.log_probs(&t).unwrap();
            for (j, &a) in w.alt_cols.iter().enumerate() {
                let want = lp[w.center * 4 + a] - lp[w.center * 4 + w.ref_col];
                assert!((mllr[k][j] - want).abs() <= 1e-5 * (1.0 + want.abs()), "{m} window {k} alt {j}: {} vs {want}", mllr[k][j]);
            }
            // embeddings: strand-averaged hidden rows of each sequence, mean over the window
            let h = embed_window / 2;
            let (lo, hi) = (w.center.saturating_sub(h), (w.center + h + 1).min(w.tokens.len()));
            let mean = |tokens: &[u8]| -> Vec<f64> {
                let mut e = Embedder::new(Cpu::new(model.clone()), model.clone(), Strand::Both, Feature::Hidden, 4096, 0).unwrap();
                let mut c = Collect::new(tokens.len(), d, true);
                e.record(tokens, &mut c, &mut |_| {}).unwrap();
                (0..d).map(|j| (lo..hi).map(|p| c.rows[p * d + j] as f64).sum::<f64>() / (hi - lo) as f64).collect()
            };
            let r = mean(&w.tokens);
            for (j, &a) in w.alt_cols.iter().enumerate() {
                let mut t = w.tokens.clone();
                t[w.center] = dna_mamba::tokenizer::ACGT[a];
                let x = mean(&t);
                let dot: f64 = r.iter().zip(&x).map(|(p, q)| p * q).sum();
                let norm = |v: &[f64]| v.iter().map(|p| p * p).sum::<f64>().sqrt();
                let cos = dot / (norm(&r) * norm(&x));
                let l2 = r.iter().zip(&x).map(|(p, q)| (p - q).powi(2)).sum::<f64>().sqrt();
                let (gc, gl) = dist[k][j];
                assert!((gc as f64 - cos).abs() <= 1e-5, "{m} window {k} alt {j}: cos {gc} vs {cos}");
                assert!((gl as f64 - l2).abs() <= 1e-4 * (1.0 + l2), "{m} window {k} alt {j}: l2 {gl} vs {l2}");
            }
        }
    }
}

/// A malformed VCF line stops the run with one error line naming it, after every record
/// before it has been written (stdout is a stream: what was done is kept).
#[test]
fn a_bad_vcf_line_fails_after_writing_the_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, vcf) = setup(dir.path());
    let good = std::fs::read_to_string(&vcf).unwrap();
    let n_good = good.lines().filter(|l| !l.starts_with('#')).count();
    let bad = dir.path().join("bad.vcf");
    std::fs::write(&bad, format!("{good}c\tnot_a_position\t.\tA\tC\t.\tPASS\t.\nc\t5\t.\tA\tC\t.\tPASS\t.\n")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dna-mamba"))
        .args(["score-variants", "--vcf", bad.to_str().unwrap(), "--fasta", &fa, "-m", &fixtures().join("ph").to_string_lossy()])
        .args(["--format", "tsv", "--scores", "llr", "--context", "700"])
        .output()
        .unwrap();
    assert_clean_failure(&o, "bad VCF line", &format!("record {}", n_good + 1));
    let out = String::from_utf8(o.stdout).unwrap();
    let rows = out.lines().skip(1).count();
    // one TSV row per alternate allele; every record here has one
    assert_eq!(rows, n_good, "{out}");
}
