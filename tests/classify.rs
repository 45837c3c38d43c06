//! `train` and `classify` end to end: heads learn a planted signal and not shuffled labels,
//! the CSV, BED and bedGraph writers match hand-checked cases, and bad heads, backbones and
//! labels fail cleanly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use dna_mamba::heads::{self, Features, Head, Kind, Level, Meta, Net, Pooling, Source};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dna-mamba"))
}

fn model(name: &str) -> String {
    fixtures().join(name).to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> Output {
    // no stray default heads from the source tree in these tests
    bin().args(args).env("DNA_MAMBA_HEADS", "/nonexistent").stdin(Stdio::null()).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Asserts a clean failure: non-zero exit, one `error:` line, no panic.
fn fails(args: &[&str], needle: &str) {
    assert_clean_failure(&run(args), &format!("{args:?}"), needle);
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_string_lossy().into_owned()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The `test` row of train's metrics table: (n, accuracy, macro_f1, mcc, auroc).
fn test_scores(stdout: &str) -> (usize, f64, f64, f64, f64) {
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("split\tn\taccuracy\tmacro_f1\tmcc\tauroc"));
    let row = stdout.lines().find(|l| l.starts_with("test\t")).expect("a test row");
    let f: Vec<&str> = row.split('\t').collect();
    (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap(), f[4].parse().unwrap(), f[5].parse().unwrap())
}

const MOTIF: &[u8] = b"GGATCCGGATCCGGATCCGGATCC";

/// Reads of 250 bases; even-numbered ones carry two copies of MOTIF. Returns (fasta with
/// `label=` fields, fasta without, the true labels).
fn motif_reads(n: usize, seed: u64) -> (String, String, Vec<&'static str>) {
    let (mut with, mut without, mut labels) = (String::new(), String::new(), Vec::new());
    for i in 0..n {
        let mut seq = random_dna(250, seed * 10_000 + i as u64);
        let label = if i % 2 == 0 { "motif" } else { "plain" };
        if label == "motif" {
            let r = random_dna(2, seed * 7 + i as u64);
            for (k, at) in [(r[0] as usize * 3) % 90, 120 + (r[1] as usize * 5) % 100].into_iter().enumerate() {
                let _ = k;
                seq[at..at + MOTIF.len()].copy_from_slice(MOTIF);
            }
        }
        let seq = String::from_utf8(seq).unwrap();
        with += &format!(">r{i} label={label}\n{seq}\n");
        without += &format!(">r{i}\n{seq}\n");
        labels.push(label);
    }
    (with, without, labels)
}

/// `x_train` and `x_test` of a `train --save-features` file, row-major.
fn saved_features(path: &str) -> (Vec<f32>, Vec<f32>, usize) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |n: &str| -> (Vec<f32>, usize) {
        let t = st.tensor(n).unwrap();
        (t.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), t.shape()[1])
    };
    let ((tr, d), (te, _)) = (get("x_train"), get("x_test"));
    (tr, te, d)
}

#[test]
fn backbone_with_kmers_is_both_side_by_side() {
    // --with-kmers: each row is the backbone's row followed by the k-mer baseline's, exactly,
    // at read level (packed batches) and position level (same window for both); the head
    // records the k-mer sizes and classify recomputes the same features
    let dir = tempfile::tempdir().unwrap();
    let (with, _, _) = motif_reads(120, 3);
    let fa = write(dir.path(), "reads.fa", &with);
    let f = |name: &str| s(&dir.path().join(name));
    let head = f("h.safetensors");
    ok(&["train", "--level", "read", &fa, "-m", &model("ph"), "--device", "cpu", "-o", &head, "-q", "--save-features", &f("b.st")]);
    ok(&["train", "--level", "read", &fa, "--features", "kmer", "--k", "2,3", "-o", &head, "-q", "--save-features", &f("k.st")]);
    let out = ok(&["train", "--level", "read", &fa, "-m", &model("ph"), "--device", "cpu", "--with-kmers", "--k", "2,3", "-o", &head, "--save-features", &f("bk.st")]);
    let ((btr, bte, bd), (ktr, kte, kd), (tr, te, d)) = (saved_features(&f("b.st")), saved_features(&f("k.st")), saved_features(&f("bk.st")));
    assert_eq!(d, bd + kd);
    for (both, (b, k)) in [(&tr, (&btr, &ktr)), (&te, (&bte, &kte))] {
        assert_eq!(both.len() / d, b.len() / bd);
        for (i, row) in both.chunks(d).enumerate() {
            assert_eq!(&row[..bd], &b[i * bd..(i + 1) * bd], "row {i}: backbone part");
            assert_eq!(&row[bd..], &k[i * kd..(i + 1) * kd], "row {i}: k-mer part");
        }
    }
    let h = Head::load(Path::new(&head)).unwrap();
    assert_eq!((h.meta.features.k.clone(), h.meta.features.dim), (vec![2, 3], d));
    assert!(out.contains("test"), "{out}");
    let got = ok(&["classify", &fa, "--head", &head, "-m", &model("ph"), "--device", "cpu", "-q"]);
    assert_eq!(got.lines().count(), 121);

    // position level: window:31 for both
    let (mut genome, mut bed) = (String::new(), String::new());
    let seq = String::from_utf8(random_dna(6000, 77)).unwrap();
    genome += &format!(">g\n{seq}\n>t\n{}\n", String::from_utf8(random_dna(3000, 78)).unwrap());
    for (a, b) in [(500, 1500), (3000, 4200), (700, 1600)] {
        bed += &format!("{}\t{a}\t{b}\tisland\n", if b == 1600 { "t" } else { "g" });
    }
    let (g, bedf) = (write(dir.path(), "g.fa", &genome), write(dir.path(), "g.bed", &bed));
    let common = ["train", "--level", "position", &g, "--bed", &bedf, "--test-chroms", "t", "--stretch", "1000", "--pool", "window:31", "-q", "-o", &head];
    let run = |extra: &[&str]| ok(&common.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>());
    run(&["-m", &model("ph"), "--device", "cpu", "--save-features", &f("pb.st")]);
    run(&["--features", "kmer", "--k", "2,3", "--save-features", &f("pk.st")]);
    run(&["-m", &model("ph"), "--device", "cpu", "--with-kmers", "--k", "2,3", "--save-features", &f("pbk.st")]);
    let ((btr, _, bd), (ktr, _, kd), (tr, _, d)) = (saved_features(&f("pb.st")), saved_features(&f("pk.st")), saved_features(&f("pbk.st")));
    assert_eq!(d, bd + kd);
    assert!(tr.len() / d > 100);
    for (i, row) in tr.chunks(d).enumerate() {
        assert_eq!(&row[..bd], &btr[i * bd..(i + 1) * bd], "position row {i}: backbone part");
        assert_eq!(&row[bd..], &ktr[i * kd..(i + 1) * kd], "position row {i}: k-mer part");
    }
    let bedout = ok(&["classify", &g, "--head", &head, "-m", &model("ph"), "--device", "cpu", "-q", "--format", "bed"]);
    assert!(bedout.lines().count() >= 2);
    // a window too small for the k-mers, and bins, are refused
    fails(&["train", "--level", "position", &g, "--bed", &bedf, "-m", &model("ph"), "--device", "cpu", "--with-kmers", "--pool", "none", "-o", &head], "must hold the longest k-mer");
    fails(&["train", "--level", "read", &fa, "-m", &model("ph"), "--device", "cpu", "--with-kmers", "--pool", "bins:3", "-o", &head], "not bins");
}

#[test]
fn planted_motif_is_learned_and_shuffled_labels_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (with, without, labels) = motif_reads(400, 1);
    let fa = write(dir.path(), "reads.fa", &with);
    let head = s(&dir.path().join("motif.safetensors"));
    for kind in ["linear", "mlp"] {
        let out = ok(&["train", "--level", "read", &fa, "-m", &model("ph"), "--device", "cpu", "-o", &head, "--kind", kind, "-q"]);
        let (n, acc, f1, mcc, auc) = test_scores(&out);
        assert_eq!(n, 80);
        assert!(acc >= 0.95 && f1 >= 0.95 && mcc >= 0.9 && auc >= 0.98, "{kind}: planted motif not learned: {out}");
    }
    // the k-mer baseline sees it too
    let out = ok(&["train", "--level", "read", &fa, "--features", "kmer", "-o", &s(&dir.path().join("k.safetensors")), "-q"]);
    assert!(test_scores(&out).1 >= 0.9, "{out}");

    // shuffled labels from an id,label table: nothing to learn
    let plain = write(dir.path(), "plain.fa", &without);
    let mut shuffled: Vec<&str> = labels.clone();
    let order = random_dna(shuffled.len(), 99);
    for i in (1..shuffled.len()).rev() {
        let j = (order[i] as usize * 7919 + i * 104_729) % (i + 1);
        shuffled.swap(i, j);
    }
    let table: String = std::iter::once("id,label\n".to_string()).chain(shuffled.iter().enumerate().map(|(i, l)| format!("r{i},{l}\n"))).collect();
    let csv = write(dir.path(), "labels.csv", &table);
    let out = ok(&["train", "--level", "read", &plain, "--labels", &csv, "-m", &model("ph"), "--device", "cpu", "-o", &head, "-q"]);
    let (_, acc, _, mcc, _) = test_scores(&out);
    assert!(acc < 0.7 && mcc < 0.4, "shuffled labels should not be learnable: {out}");

    // the fitted head classifies fresh reads
    let (fresh, _, truth) = motif_reads(60, 2);
    let fresh = write(dir.path(), "fresh.fa", &fresh);
    let head = s(&dir.path().join("motif.safetensors"));
    ok(&["train", "--level", "read", &fa, "-m", &model("ph"), "--device", "cpu", "-o", &head, "-q"]);
    let threshold = Head::load(Path::new(&head)).unwrap().meta.call_threshold.expect("a read-level head gets a call threshold");
    assert!((0.5..=1.0).contains(&threshold), "{threshold}");
    let out = ok(&["classify", &fresh, "--head", &head, "-m", &model("ph"), "--device", "cpu", "-q"]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("id,length,label,p_motif,p_plain"));
    let (mut right, mut unassigned) = (0, 0);
    for (i, l) in lines.enumerate() {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f[0], format!("r{i}"));
        assert_eq!(f[1], "250");
        let (p0, p1): (f32, f32) = (f[3].parse().unwrap(), f[4].parse().unwrap());
        assert!((p0 + p1 - 1.0).abs() < 1e-5);
        // below the head's call threshold (chosen on the held-out split) a read is unassigned
        let call = if p0.max(p1) < threshold { "unassigned" } else if p0 >= p1 { "motif" } else { "plain" };
        assert_eq!(f[2], call, "{l}");
        right += (f[2] == truth[i]) as usize;
        unassigned += (f[2] == "unassigned") as usize;
    }
    // the calls made are at least as precise as the held-out target, and most reads are called
    assert!(right as f64 >= 0.9 * (60 - unassigned) as f64 && unassigned <= 15, "{right} right, {unassigned} unassigned of 60 fresh reads");
    // --min-p 0: every read gets its most probable label
    fails(&["classify", &fresh, "--head", &head, "-m", &model("ph"), "--device", "cpu", "--min-p", "1.5"], "expected a probability");
    let out = ok(&["classify", &fresh, "--head", &head, "-m", &model("ph"), "--device", "cpu", "-q", "--min-p", "0"]);
    let right = out.lines().skip(1).enumerate().filter(|(i, l)| l.split(',').nth(2) == Some(truth[*i])).count();
    assert!(right >= 57, "{right}/60 fresh reads right");
}

#[test]
fn position_head_finds_planted_islands() {
    // GC-rich islands in random sequence, marked in a BED file
    let dir = tempfile::tempdir().unwrap();
    let (mut fa, mut bed) = (String::new(), String::new());
    for (c, chrom) in ["c1", "c2"].iter().enumerate() {
        let mut seq = random_dna(30_000, 50 + c as u64);
        let mut at = 300;
        let mut k = 0;
        while at + 400 < seq.len() {
            let len = 150 + (k * 37) % 250;
            let gc = random_dna(len, 1000 + k as u64 + 100 * c as u64);
            for (i, b) in gc.iter().enumerate() {
                seq[at + i] = if matches!(b, b'A' | b'C') { b'G' } else { b'C' };
            }
            bed += &format!("{chrom}\t{at}\t{}\tisland\n", at + len);
            at += len + 400 + (k * 53) % 500;
            k += 1;
        }
        fa += &format!(">{chrom}\n{}\n", String::from_utf8(seq).unwrap());
    }
    let fa = write(dir.path(), "g.fa", &fa);
    let bedf = write(dir.path(), "g.bed", &bed);
    let head = s(&dir.path().join("isl.safetensors"));
    let out = ok(&[
        "train", "--level", "position", &fa, "--bed", &bedf, "-m", &model("ph"), "--device", "cpu", "-o", &head, "--stretch", "5000",
        "--pool", "window:21", "--max-positions", "20000", "-q",
    ]);
    let (n, acc, _, mcc, _) = test_scores(&out);
    assert!(n > 1000);
    assert!(acc > 0.95 && mcc > 0.85, "{out}");
    let h = Head::load(Path::new(&head)).unwrap();
    assert_eq!(h.meta.labels, ["island", "other"]);
    assert_eq!(h.meta.background.as_deref(), Some("other"));
    assert_eq!(h.meta.features.pooling, Pooling::Window(21));

    // BED: runs tile each record exactly once, in order; islands found where planted
    let out = ok(&["classify", &fa, "--head", &head, "-m", &model("ph"), "--device", "cpu", "-q", "--format", "bed"]);
    let mut next: std::collections::HashMap<&str, usize> = Default::default();
    let mut island_bases = 0;
    for l in out.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f.len(), 6);
        let (st, en): (usize, usize) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        assert_eq!(*next.get(f[0]).unwrap_or(&0), st, "{l}");
        next.insert(f[0], en);
        let score: u32 = f[4].parse().unwrap();
        assert!((500..=1000).contains(&score), "{l}");
        assert_eq!(f[5], ".");
        if f[3] == "island" {
            island_bases += en - st;
        }
    }
    assert_eq!((next["c1"], next["c2"]), (30_000, 30_000));
    let planted: usize = bed.lines().map(|l| {
        let f: Vec<usize> = l.split('\t').skip(1).take(2).map(|v| v.parse().unwrap()).collect();
        f[1] - f[0]
    }).sum();
    assert!((island_bases as f64 - planted as f64).abs() < 0.1 * planted as f64, "{island_bases} vs {planted}");
    // --label keeps one label's runs; bedgraph writes its probability per base
    let only = ok(&["classify", &fa, "--head", &head, "-m", &model("ph"), "--device", "cpu", "-q", "--format", "bed", "--label", "island"]);
    assert!(only.lines().all(|l| l.split('\t').nth(3) == Some("island")));
    // --smooth and --min-run: still a tiling of each record, no run under the minimum, fewer runs
    let smooth = ok(&["classify", &fa, "--head", &head, "-m", &model("ph"), "--device", "cpu", "-q", "--format", "bed", "--smooth", "31", "--min-run", "200"]);
    let mut next: std::collections::HashMap<&str, usize> = Default::default();
    for l in smooth.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        let (st, en): (usize, usize) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        assert_eq!(*next.get(f[0]).unwrap_or(&0), st, "{l}");
        assert!(en - st >= 200, "{l}");
        next.insert(f[0], en);
    }
    assert_eq!((next["c1"], next["c2"]), (30_000, 30_000));
    assert!(smooth.lines().count() <= out.lines().count(), "{} vs {} runs", smooth.lines().count(), out.lines().count());
    fails(&["classify", &fa, "--head", &head, "-m", &model("ph"), "--format", "bedgraph", "--min-run", "5"], "--min-run joins BED runs");
    fails(&["classify", &fa, "--head", &head, "-m", &model("ph"), "--format", "bed", "--min-p", "0.5"], "--min-p is for read-level heads");
    fails(&["classify", &fa, "--head", &head, "-m", &model("ph"), "--format", "bed", "--smooth", "0"], "at least 1");
    let graph = ok(&["classify", &fa, "--head", &head, "-m", &model("ph"), "--device", "cpu", "-q", "--format", "bedgraph"]);
    let mut lines = graph.lines();
    assert_eq!(lines.next(), Some("track type=bedGraph name=\"isl p(island)\""));
    let covered: usize = lines.map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        let v: f64 = f[3].parse().unwrap();
        assert!((0.0..=1.0).contains(&v));
        f[2].parse::<usize>().unwrap() - f[1].parse::<usize>().unwrap()
    }).sum();
    assert_eq!(covered, 60_000);
}

/// A hand-made k-mer (k = 1) head: features (freq A/T, freq C/G); logits (a·2, −a·2) for
/// an A/T base and the opposite for C/G when standardized with mu 0.5, sd 0.5.
fn k1_head(level: Level, pooling: Pooling, a: f32) -> Head {
    Head {
        meta: Meta {
            format: heads::FORMAT.into(),
            version: heads::VERSION,
            task: "at".into(),
            labels: vec!["at".into(), "gc".into()],
            level,
            background: None,
            kind: Kind::Linear,
            hidden: None,
            features: Features { source: Source::Kmer, strand: "both".into(), pooling, k: vec![1], layers: Vec::new(), dim: 2 },
            backbone: None,
            context: None,
            call_threshold: None,
            training: serde_json::Value::Null,
        },
        mu: vec![0.5, 0.5],
        sd: vec![0.5, 0.5],
        net: Net::Linear { w: vec![a, -a, -a, a], b: vec![0.0, 0.0] },
    }
}

#[test]
fn writers_match_hand_checked_cases() {
    let dir = tempfile::tempdir().unwrap();
    let fa = write(dir.path(), "x.fa", ">x\nAATGCCAN\n>y desc\nG\n");
    // position level, window 1: an A/T base has z = (1, -1), logits (2a, -2a)
    let a = 0.5f32; // p(at) = 1/(1+e^-2) = 0.8808 at A/T, 0.1192 at C/G
    let pos = dir.path().join("pos.safetensors");
    k1_head(Level::Position, Pooling::Window(1), a).save(&pos).unwrap();
    let bed = ok(&["classify", &fa, "--head", &s(&pos), "-q"]);
    // N: no k-mers, z = (-1, -1), equal logits: p = 0.5 each and argmax takes the first label,
    // so it joins the A before it: run 6-8 scores round(1000 x (0.8808 + 0.5) / 2) = 690
    assert_eq!(bed, "x\t0\t3\tat\t881\t.\nx\t3\t6\tgc\t881\t.\nx\t6\t8\tat\t690\t.\ny\t0\t1\tgc\t881\t.\n");
    let graph = ok(&["classify", &fa, "--head", &s(&pos), "-q", "--format", "bedgraph", "--label", "gc"]);
    assert_eq!(graph, "track type=bedGraph name=\"at p(gc)\"\nx\t0\t3\t0.119\nx\t3\t6\t0.881\nx\t6\t7\t0.119\nx\t7\t8\t0.500\ny\t0\t1\t0.881\n");
    // read level: x has 7 ACGT bases, 4 A/T and 3 C/G: z = (1/7, -1/7), logits (1, -1) with
    // a = 3.5; y is one G: z = (-1, 1), logits (-7, 7)
    let read = dir.path().join("read.safetensors");
    k1_head(Level::Read, Pooling::Mean, 3.5).save(&read).unwrap();
    let csv = ok(&["classify", &fa, "--head", &s(&read), "-q"]);
    let p = 1.0 / (1.0 + (-2f32).exp());
    let q = 1.0 / (1.0 + 14f32.exp());
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("id,length,label,p_at,p_gc"));
    for (line, (id, len, label, want)) in lines.zip([("x", "8", "at", p), ("y", "1", "gc", q)]) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!((f[0], f[1], f[2]), (id, len, label), "{csv}");
        let (pa, pg): (f32, f32) = (f[3].parse().unwrap(), f[4].parse().unwrap());
        assert!((pa - want).abs() < 1e-6 && (pg - (1.0 - want)).abs() < 1e-6, "{csv}");
    }
    assert_eq!(csv.lines().count(), 3);
    // two read heads: columns prefixed by task
    let mut other = k1_head(Level::Read, Pooling::Mean, 1.0);
    other.meta.task = "at2".into();
    let read2 = dir.path().join("read2.safetensors");
    other.save(&read2).unwrap();
    let csv = ok(&["classify", &fa, "--head", &s(&read), "--head", &s(&read2), "-q"]);
    assert_eq!(csv.lines().next(), Some("id,length,at.label,at.p_at,at.p_gc,at2.label,at2.p_at,at2.p_gc"));
    assert_eq!(csv.lines().count(), 3);
}

#[test]
fn empty_input_gives_a_header_only() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.fa", "");
    let read = dir.path().join("read.safetensors");
    k1_head(Level::Read, Pooling::Mean, 1.0).save(&read).unwrap();
    assert_eq!(ok(&["classify", &empty, "--head", &s(&read), "-q"]), "id,length,label,p_at,p_gc\n");
    let pos = dir.path().join("pos.safetensors");
    k1_head(Level::Position, Pooling::Window(1), 1.0).save(&pos).unwrap();
    assert_eq!(ok(&["classify", &empty, "--head", &s(&pos), "-q", "--format", "bed"]), "");
    assert_eq!(ok(&["classify", &empty, "--head", &s(&pos), "-q", "--format", "bedgraph"]), "track type=bedGraph name=\"at p(at)\"\n");
    // with a backbone head too
    let (with, _, _) = motif_reads(40, 3);
    let fa = write(dir.path(), "r.fa", &with);
    let head = s(&dir.path().join("m.safetensors"));
    ok(&["train", "--level", "read", &fa, "-m", &model("ph"), "--device", "cpu", "-o", &head, "-q"]);
    assert_eq!(ok(&["classify", &empty, "--head", &head, "-m", &model("ph"), "--device", "cpu", "-q"]), "id,length,label,p_motif,p_plain\n");
}

#[test]
fn bad_heads_backbones_and_labels_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (with, without, _) = motif_reads(40, 4);
    let fa = write(dir.path(), "r.fa", &with);
    let plain = write(dir.path(), "p.fa", &without);
    let head = s(&dir.path().join("m.safetensors"));
    ok(&["train", "--level", "read", &fa, "-m", &model("ph"), "--device", "cpu", "-o", &head, "-q"]);
    // a head on another backbone
    fails(&["classify", &fa, "--head", &head, "-m", &model("ps"), "--device", "cpu"], "fitted on another backbone");
    fails(&["classify", &fa, "--head", &head, "-m", &model("causal"), "--device", "cpu"], "fitted on another backbone");
    // no --model: the built-in default backbone, which is not the one the head was fitted on
    fails(&["classify", &fa, "--head", &head, "--device", "cpu"], "give its backbone with --model");
    // label rows naming unknown ids
    let table: String = (0..40).map(|i| format!("r{i},{}\n", if i % 2 == 0 { "a" } else { "b" })).collect::<String>() + "ghost,a\nr9x,b\n";
    let csv = write(dir.path(), "l.csv", &table);
    let out = s(&dir.path().join("o.safetensors"));
    fails(&["train", "--level", "read", &plain, "--labels", &csv, "-m", &model("ph"), "-o", &out], "2 label rows name no input record (first: 'ghost' on line 41)");
    assert!(!Path::new(&out).exists());
    // a record without a label
    let short: String = (0..39).map(|i| format!("r{i},a\n")).collect();
    let csv = write(dir.path(), "short.csv", &short);
    fails(&["train", "--level", "read", &plain, "--labels", &csv, "-m", &model("ph"), "-o", &out], "record 'r39' has no row in");
    fails(&["train", "--level", "read", &plain, "-m", &model("ph"), "-o", &out], "has no label");
    // one label only
    let csv = write(dir.path(), "one.csv", &(0..40).map(|i| format!("r{i},a\n")).collect::<String>());
    fails(&["train", "--level", "read", &plain, "--labels", &csv, "-m", &model("ph"), "-o", &out], "at least two");
    // not a head: a model file, garbage, a missing name
    fails(&["classify", &fa, "--head", &s(&fixtures().join("ph/model.safetensors")), "-m", &model("ph")], "not a dna-mamba head");
    let junk = write(dir.path(), "junk.safetensors", "junk");
    fails(&["classify", &fa, "--head", &junk, "-m", &model("ph")], "not a safetensors file");
    fails(&["classify", &fa, "--head", "no-such-head", "-m", &model("ph")], "no-such-head");
    fails(&["classify", &fa, "-m", &model("ph")], "default head is missing");
    // wrong level for the format; unknown --label
    fails(&["classify", &fa, "--head", &head, "-m", &model("ph"), "--format", "bed"], "use --format csv");
    let pos = dir.path().join("pos.safetensors");
    k1_head(Level::Position, Pooling::Window(1), 1.0).save(&pos).unwrap();
    fails(&["classify", &fa, "--head", &s(&pos), "--format", "bedgraph", "--label", "cds"], "--label cds");
    fails(&["classify", &fa, "--head", &s(&pos), "--format", "csv"], "bed or bedgraph");
    // position level: intervals on no genome sequence
    let bed = write(dir.path(), "x.bed", "chrZ\t0\t10\tcds\n");
    fails(&["train", "--level", "position", &fa, "--bed", &bed, "--features", "kmer", "-o", &out], "no interval lies on a genome sequence");
    fails(&["train", "--level", "position", &fa, "-o", &out, "--features", "kmer"], "--bed FILE or --gff FILE");
    fails(&["train", "--level", "read", &fa, "-o", &out, "--pool", "window:5", "--features", "kmer"], "--pool window:5");
}

#[test]
fn gff_intervals_and_held_out_sequences() {
    // k-mer features need no model: a fast check of the GFF path and of --test-chroms
    let dir = tempfile::tempdir().unwrap();
    let mut fa = String::new();
    let mut gff = String::from("##gff-version 3\n");
    for (c, chrom) in ["a", "b", "c"].iter().enumerate() {
        let mut seq = random_dna(12_000, 70 + c as u64);
        for k in 0..10 {
            let at = 500 + k * 1100;
            for b in &mut seq[at..at + 400] {
                *b = if matches!(b, b'A' | b'T') { b'A' } else { b'T' };
            }
            gff += &format!("{chrom}\tx\tgene\t{}\t{}\t.\t+\t.\tID=g{c}{k}\n", at + 1, at + 400);
            gff += &format!("{chrom}\tx\tCDS\t{}\t{}\t.\t+\t0\tParent=g{c}{k}\n", at + 1, at + 400);
        }
        fa += &format!(">{chrom}\n{}\n", String::from_utf8(seq).unwrap());
    }
    let fa = write(dir.path(), "g.fa", &fa);
    let gff = write(dir.path(), "g.gff3", &gff);
    let head = s(&dir.path().join("at.safetensors"));
    let out = ok(&["train", "--level", "position", &fa, "--gff", &gff, "--label", "coding", "--background", "noncoding", "--features", "kmer", "--k", "2", "--pool", "window:31", "--test-chroms", "c", "--stretch", "3000", "-o", &head, "-q"]);
    let (n, acc, ..) = test_scores(&out);
    assert_eq!(n, 12_000);
    assert!(acc > 0.95, "{out}");
    let h = Head::load(Path::new(&head)).unwrap();
    assert_eq!(h.meta.labels, ["coding", "noncoding"]);
    assert!(h.meta.backbone.is_none());
    let split = h.meta.training["data"]["split"].as_str().unwrap();
    assert_eq!(split, "held-out sequences c");
    // the k-mer head classifies without a model; bedgraph defaults to the non-background label
    let graph = ok(&["classify", &fa, "--head", &head, "--format", "bedgraph", "-q"]);
    assert!(graph.starts_with("track type=bedGraph name=\"at p(coding)\"\n"));
}

/// The heads built into the binary run on the built-in model: if this fails after the default
/// model changed, refit them (train/heads/fit.sh) and rebuild.
#[test]
fn builtin_heads_run_on_the_builtin_model() {
    let dir = tempfile::tempdir().unwrap();
    let human = "GGCTGGAGTGCAGTGGCGCGATCTCGGCTCACTGCAAGCTCCGCCTCCCGGGTTCACGCCATTCTCCTGCCTCAGCCTCCCGAGTAGCTGGGACTACAGG";
    let fa = write(dir.path(), "x.fa", &format!(">alu\n{human}\n"));
    let o = bin().args(["classify", &fa, "-q", "--device", "cpu"]).env_remove("DNA_MAMBA_HEADS").output().unwrap();
    assert!(o.status.success(), "the built-in origin head on the built-in model: {}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("id,length,label,p_bacterial,p_fungal,p_human,p_viral\nalu,100,"), "{out}");
    let o = bin().args(["classify", &fa, "-q", "--device", "cpu", "--format", "bed"]).env_remove("DNA_MAMBA_HEADS").output().unwrap();
    assert!(o.status.success(), "the built-in coding head on the built-in model: {}", String::from_utf8_lossy(&o.stderr));
    let bed = String::from_utf8(o.stdout).unwrap();
    let covered: usize = bed.lines().map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        assert!(f[3] == "coding" || f[3] == "noncoding");
        f[2].parse::<usize>().unwrap() - f[1].parse::<usize>().unwrap()
    }).sum();
    assert_eq!(covered, 100);
}

#[test]
fn named_heads_are_found_in_the_heads_folder() {
    let dir = tempfile::tempdir().unwrap();
    k1_head(Level::Read, Pooling::Mean, 1.0).save(&dir.path().join("origin.safetensors")).unwrap();
    let fa = write(dir.path(), "x.fa", ">x\nACGT\n");
    let o = bin().args(["classify", &fa, "-q"]).env("DNA_MAMBA_HEADS", dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("id,length,label,p_at,p_gc\nx,4,"));
    let o = bin().args(["classify", &fa, "-q", "--head", "origin"]).env("DNA_MAMBA_HEADS", dir.path()).output().unwrap();
    assert!(o.status.success());
    let _: PathBuf = dir.path().join("unused");
}

/// CPU and GPU give the same probabilities to within the backend tolerance; a label may differ
/// only where its top two probabilities are about as close. Passes (with a note) without a GPU.
#[cfg(feature = "cuda")]
#[test]
fn cpu_and_gpu_agree() {
    match dna_mamba::backend::cuda::available() {
        Ok(n) if n > 0 => {}
        other => {
            eprintln!("cpu_and_gpu_agree: skipped, no usable CUDA device ({:?})", other.err().map(|e| e.to_string()));
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (with, _, _) = motif_reads(200, 5);
    let fa = write(dir.path(), "r.fa", &with);
    let head = s(&dir.path().join("m.safetensors"));
    ok(&["train", "--level", "read", &fa, "-m", &model("ph"), "--device", "cpu", "-o", &head, "-q"]);
    let rows = |device: &str| -> Vec<(String, Vec<f32>)> {
        let out = ok(&["classify", &fa, "--head", &head, "-m", &model("ph"), "--device", device, "-q"]);
        out.lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[2].to_string(), f[3..].iter().map(|v| v.parse().unwrap()).collect())
            })
            .collect()
    };
    let (cpu, gpu) = (rows("cpu"), rows("cuda"));
    assert_eq!(cpu.len(), gpu.len());
    for ((lc, pc), (lg, pg)) in cpu.iter().zip(&gpu) {
        let diff = pc.iter().zip(pg).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-4, "probabilities differ by {diff}");
        if lc != lg {
            assert!((pc[0] - pc[1]).abs() <= 2e-4, "labels {lc} / {lg} differ at {pc:?}");
        }
    }
}

/// Read-level backbone features (mean and segment means) through `read` (range sums per
/// tile) and `read_batch` (records batched) against per-position rows averaged here, for
/// records shorter than the number of segments, records that need several tiles, and both
/// strands on Ph and PS models.
#[test]
fn read_features_are_means_of_position_rows() {
    use dna_mamba::backend::cpu::Cpu;
    use dna_mamba::embed::{Embedder, Feature, Strand};
    use dna_mamba::heads::features::{BackboneFeatures, Featurizer};
    let lens = [1usize, 2, 5, 150, 7, 1300];
    for m in ["ph", "ps"] {
        let model = load(m);
        let seqs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &n)| random_dna(n, 70 + i as u64)).collect();
        let toks: Vec<Vec<u8>> = seqs.iter().map(|s| tokens(s)).collect();
        for pooling in [Pooling::Mean, Pooling::Bins(3), Pooling::Bins(8)] {
            let (context, overlap) = (512, 128);
            let emb = Embedder::new(Cpu::new(model.clone()), model.clone(), Strand::Both, Feature::Hidden, context, overlap).unwrap();
            let mut f = BackboneFeatures::new(emb, pooling);
            let width = model.config.d_model;
            let mut batch = Vec::new();
            let short: Vec<&[u8]> = toks.iter().filter(|t| t.len() <= context).map(|t| t.as_slice()).collect();
            f.read_batch(&short, &mut batch).unwrap();
            let mut short_rows = batch.chunks(f.dim());
            for (seq, t) in seqs.iter().zip(&toks) {
                let rows = common::run(&model, seq, Strand::Both, Feature::Hidden, 1024, true, context, overlap, true);
                let bins = match pooling {
                    Pooling::Bins(n) => n,
                    _ => 1,
                };
                let mut want = Vec::new();
                for b in 0..bins {
                    let ps: Vec<usize> = (0..t.len()).filter(|p| p * bins / t.len() == b).collect();
                    let ps = if ps.is_empty() { (0..t.len()).collect() } else { ps };
                    for c in 0..width {
                        want.push((ps.iter().map(|&p| rows[p * width + c] as f64).sum::<f64>() / ps.len() as f64) as f32);
                    }
                }
                let mut got = Vec::new();
                f.read(t, &mut got, &mut |_| {}).unwrap();
                let e = rel_err(&got, &want);
                assert!(e <= 1e-5, "{m} {pooling:?} len {}: read vs position rows {e:.2e}", t.len());
                if t.len() <= context {
                    let g = short_rows.next().unwrap();
                    let e = rel_err(g, &want);
                    assert!(e <= 1e-5, "{m} {pooling:?} len {}: read_batch vs position rows {e:.2e}", t.len());
                }
            }
        }
    }
}

/// `train --layers 1,3` fits on those layers' pooled hidden states side by side, records them
/// in the head, and `classify` reads the head's layers back: its probabilities are those of
/// the head applied to `embed --layers 1,3 --strand both` rows (the default features' view),
/// and the planted motif is learned from the intermediate layers too.
#[test]
fn heads_on_intermediate_layers() {
    let dir = tempfile::tempdir().unwrap();
    let (with, _, _) = motif_reads(200, 5);
    let fa = write(dir.path(), "reads.fa", &with);
    let head = s(&dir.path().join("l13.safetensors"));
    let out = ok(&["train", "--level", "read", &fa, "-m", &model("ph"), "--device", "cpu", "-o", &head, "--layers", "3,1", "-q"]);
    let (_, acc, ..) = test_scores(&out);
    assert!(acc >= 0.9, "layers 1,3: planted motif not learned: {out}");
    let h = dna_mamba::heads::Head::load(Path::new(&head)).unwrap();
    assert_eq!(h.meta.features.layers, vec![1, 3]);
    let d = load("ph").config.d_model;
    assert_eq!(h.dim(), 2 * d);
    // classify reads the same features: recompute them with embed and apply the head
    let (fresh, _, _) = motif_reads(20, 6);
    let fresh_fa = write(dir.path(), "fresh.fa", &fresh);
    let got = ok(&["classify", &fresh_fa, "--head", &head, "-m", &model("ph"), "--device", "cpu", "-q"]);
    let emb = ok(&["embed", &fresh_fa, "-m", &model("ph"), "--device", "cpu", "--strand", "both", "--layers", "1,3", "-q"]);
    let mut scratch = dna_mamba::heads::Scratch::default();
    for (g, e) in got.lines().skip(1).zip(emb.lines().skip(1)) {
        let g: Vec<&str> = g.split(',').collect();
        let x: Vec<f32> = e.split(',').skip(2).map(|v| v.parse().unwrap()).collect();
        let mut p = vec![0.0; h.n_labels()];
        h.predict(&x, &mut scratch, &mut p);
        for (k, pk) in p.iter().enumerate() {
            let c: f32 = g[3 + k].parse().unwrap();
            assert!((c - pk).abs() < 1e-4, "{}: classify p{k} {c} vs head on embed --layers rows {pk}", g[0]);
        }
    }
    // k-mer features have no layers
    fails(&["train", "--level", "read", &fa, "--features", "kmer", "--layers", "1", "-o", &s(&dir.path().join("k.safetensors"))], "k-mer features");
}
