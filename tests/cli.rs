//! End-to-end runs of the binary: outputs, formats, strands, accounting and clean failures.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dna-mamba"))
}

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn model(name: &str) -> String {
    fixtures().join(name).to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> Output {
    bin().args(args).stdin(Stdio::null()).output().unwrap()
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

/// rows of a CSV: (first field, numbers after `skip` fields)
fn parse(csv: &str, skip: usize) -> Vec<(String, Vec<f32>)> {
    csv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[skip..].iter().map(|v| v.parse().unwrap()).collect())
        })
        .collect()
}

fn revcomp(s: &[u8]) -> Vec<u8> {
    s.iter()
        .rev()
        .map(|b| match b {
            b'A' => b'T',
            b'C' => b'G',
            b'G' => b'C',
            b'T' => b'A',
            x => *x,
        })
        .collect()
}

fn write(dir: &Path, name: &str, content: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn every_record_is_accounted_for() {
    let out = ok(&["embed", data("data/reads.fq.gz").to_str().unwrap(), "-m", &model("ph"), "-q"]);
    let rows = parse(&out, 2);
    assert_eq!(rows.len(), 300);
    let ids: Vec<String> = {
        let mut r = needletail::parse_fastx_file(data("data/reads.fq.gz")).unwrap();
        let mut v = Vec::new();
        while let Some(rec) = r.next() {
            let rec = rec.unwrap();
            v.push(String::from_utf8_lossy(rec.id().split(|b| *b == b' ').next().unwrap()).into_owned());
        }
        v
    };
    assert_eq!(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), ids);
    assert!(rows.iter().all(|r| r.1.len() == 24 && r.1.iter().all(|v| v.is_finite())));
}

#[test]
fn strand_both_is_reverse_complement_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let seq = random_dna(513, 7);
    let fa = format!(">x\n{}\n>x_rc\n{}\n", String::from_utf8_lossy(&seq), String::from_utf8_lossy(&revcomp(&seq)));
    let f = write(dir.path(), "x.fa", fa.as_bytes());
    for m in ["ph", "ps", "causal"] {
        // pooled
        let rows = parse(&ok(&["embed", &f, "-m", &model(m), "-q"]), 2);
        let err = rel_err(&rows[0].1, &rows[1].1);
        assert!(err <= 1e-5, "{m}: pooled both not RC invariant: {err:e}");
        // per position, also across several tiles (symmetric tiling)
        for ctx in ["100000", "64"] {
            let out = ok(&["embed", &f, "-m", &model(m), "-q", "--pool", "none", "--context", ctx, "--overlap", "16"]);
            let rows = parse(&out, 2);
            let (a, b) = rows.split_at(513);
            let fwd: Vec<f32> = a.iter().flat_map(|r| r.1.clone()).collect();
            let rev: Vec<f32> = b.iter().rev().flat_map(|r| r.1.clone()).collect();
            let err = rel_err(&fwd, &rev);
            assert!(err <= 1e-5, "{m} context {ctx}: per-position both not RC invariant: {err:e}");
        }
        // the forward view alone is not invariant for Ph (the test can fail)
        if m == "ph" {
            let rows = parse(&ok(&["embed", &f, "-m", &model(m), "-q", "--strand", "fwd"]), 2);
            assert!(rel_err(&rows[0].1, &rows[1].1) > 1e-3);
        }
    }
}

#[test]
fn compressions_are_sniffed() {
    let dir = tempfile::tempdir().unwrap();
    let plain = std::fs::read(fixtures().join("inputs.fa")).unwrap();
    let base = ok(&["embed", &write(dir.path(), "in.fa", &plain), "-m", &model("ps"), "-q"]);
    assert_eq!(parse(&base, 2).len(), 4);
    for (tool, ext) in [("gzip", "gz"), ("bzip2", "bz2"), ("xz", "xz"), ("zstd", "zst")] {
        let Ok(c) = Command::new(tool).arg("-c").arg(dir.path().join("in.fa")).output() else {
            eprintln!("skipping {tool}: not installed");
            continue;
        };
        // a misleading name: the format must come from the bytes
        let f = write(dir.path(), &format!("in_{ext}.txt"), &c.stdout);
        assert_eq!(ok(&["embed", &f, "-m", &model("ps"), "-q"]), base, "{tool}");
    }
    // stdin
    let mut child = bin()
        .args(["embed", "-", "-m", &model("ps"), "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&plain).unwrap();
    assert_eq!(String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap(), base);
}

#[test]
fn windows_are_means_of_positions() {
    let f = fixtures().join("inputs.fa");
    let f = f.to_str().unwrap();
    let pos = parse(&ok(&["embed", f, "-m", &model("ph"), "-q", "--pool", "none"]), 2);
    let out = ok(&["embed", f, "-m", &model("ph"), "-q", "--window", "40", "--stride", "25"]);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("id,start,end,e0,"));
    let mut n = 0;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let (id, s, e): (&str, usize, usize) = (f[0], f[1].parse().unwrap(), f[2].parse().unwrap());
        let vals: Vec<f32> = f[3..].iter().map(|v| v.parse().unwrap()).collect();
        let rows: Vec<&Vec<f32>> = pos.iter().filter(|r| r.0 == id).map(|r| &r.1).collect();
        assert!(e <= rows.len() && s < e);
        let mut mean = vec![0f32; vals.len()];
        for r in &rows[s..e] {
            mean.iter_mut().zip(r.iter()).for_each(|(m, v)| *m += v / (e - s) as f32);
        }
        assert!(rel_err(&vals, &mean) < 1e-5, "{id} {s}-{e}");
        n += 1;
    }
    // one: [0,1); five: [0,5); mixed (37): [0,40)->[0,37); long (300): starts 0,25,...,275 → 12 windows (275+40 > 300 ends it)
    assert_eq!(n, 1 + 1 + 1 + 12);
}

#[test]
fn per_position_formats_agree() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures().join("inputs.fa");
    let f = f.to_str().unwrap();
    let csv = parse(&ok(&["embed", f, "-m", &model("ps"), "-q", "--pool", "none", "--strand", "fwd"]), 2);
    let want: Vec<f32> = csv.iter().flat_map(|r| r.1.clone()).collect();
    // safetensors
    let st_path = dir.path().join("o.safetensors");
    ok(&["embed", f, "-m", &model("ps"), "-q", "--pool", "none", "--strand", "fwd", "--format", "safetensors", "-o", st_path.to_str().unwrap()]);
    let bytes = std::fs::read(&st_path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut got = Vec::new();
    for id in ["one", "five", "mixed", "long"] {
        let t = st.tensor(id).unwrap();
        assert_eq!(t.shape()[1], 32);
        got.extend(t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())));
    }
    assert!(rel_err(&got, &want) < 1e-6);
    // npy + index
    let npy_dir = dir.path().join("npy");
    ok(&["embed", f, "-m", &model("ps"), "-q", "--pool", "none", "--strand", "fwd", "--format", "npy", "-o", npy_dir.to_str().unwrap()]);
    let index = std::fs::read_to_string(npy_dir.join("index.csv")).unwrap();
    assert_eq!(index.lines().count(), 5);
    let mut got = Vec::new();
    for l in index.lines().skip(1) {
        let file = l.split(',').nth(1).unwrap();
        let b = std::fs::read(npy_dir.join(file)).unwrap();
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        got.extend(b[10 + hl..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())));
    }
    assert!(rel_err(&got, &want) < 1e-6);
    // safetensors cannot stream to a pipe; duplicate ids are refused
    fails(&["embed", f, "-m", &model("ps"), "--pool", "none", "--format", "safetensors"], "needs -o FILE");
    let dup = write(dir.path(), "dup.fa", b">a\nACGT\n>a x\nGGCC\n");
    let out = dir.path().join("dup.safetensors");
    fails(&["embed", &dup, "-m", &model("ps"), "--pool", "none", "--format", "safetensors", "-o", out.to_str().unwrap()], "duplicate record id 'a'");
    assert!(!out.exists());
}

#[test]
fn logits_output() {
    let f = fixtures().join("inputs.fa");
    let out = ok(&["embed", f.to_str().unwrap(), "-m", &model("ph"), "-q", "--pool", "none", "--output", "logits", "--strand", "fwd"]);
    assert!(out.starts_with("id,pos,lp_A,lp_C,lp_G,lp_T\n"));
    for (_, v) in parse(&out, 2) {
        let p: f32 = v.iter().map(|x| x.exp()).sum();
        assert!((p - 1.0).abs() < 1e-4);
    }
    // strand average of log-probabilities: a geometric mean, so at most 1
    let out = ok(&["embed", f.to_str().unwrap(), "-m", &model("ph"), "-q", "--pool", "none", "--output", "logits"]);
    for (_, v) in parse(&out, 2) {
        assert!(v.iter().map(|x| x.exp()).sum::<f32>() <= 1.0 + 1e-5);
    }
    fails(&["embed", f.to_str().unwrap(), "-m", &model("ph"), "--output", "logits"], "needs --pool none");
    fails(&["embed", f.to_str().unwrap(), "-m", &model("ph"), "--pool", "none", "--output", "raw-logits"], "--strand fwd");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = model("ph");
    let reads = std::fs::read(data("data/reads.fq.gz")).unwrap();
    let trunc = write(d, "trunc.fq.gz", &reads[..reads.len() / 2]);
    let unequal = write(d, "bad.fq", b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n");
    let neither = write(d, "x.txt", b"hello world\n");
    let empty_rec = write(d, "er.fa", b">a\nACGT\n>b\n>c\nAC\n");
    let o = d.join("out.csv");
    let o = o.to_str().unwrap();
    for (input, needle) in [
        (trunc.as_str(), "trunc.fq.gz"),
        (unequal.as_str(), "quality length"),
        (neither.as_str(), "not FASTA or FASTQ"),
        (empty_rec.as_str(), "record 'b'"),
        ("/nonexistent/x.fa", "No such file"),
    ] {
        fails(&["embed", input, "-m", &m, "-o", o], needle);
        assert!(!Path::new(o).exists(), "{input}: partial output left behind");
        assert!(std::fs::read_dir(d).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial")));
    }
    // model folders
    let nocfg = d.join("nocfg");
    std::fs::create_dir(&nocfg).unwrap();
    std::fs::copy(fixtures().join("ph/model.safetensors"), nocfg.join("model.safetensors")).unwrap();
    fails(&["embed", &trunc, "-m", nocfg.to_str().unwrap()], "config.json");
    let truncm = d.join("truncm");
    std::fs::create_dir(&truncm).unwrap();
    std::fs::copy(fixtures().join("ph/config.json"), truncm.join("config.json")).unwrap();
    let st = std::fs::read(fixtures().join("ph/model.safetensors")).unwrap();
    std::fs::write(truncm.join("model.safetensors"), &st[..st.len() - 100]).unwrap();
    fails(&["info", "-m", truncm.to_str().unwrap()], "not a valid safetensors file");
    std::fs::remove_file(truncm.join("model.safetensors")).unwrap();
    std::fs::write(truncm.join("pytorch_model.bin"), b"PK").unwrap();
    fails(&["info", "-m", truncm.to_str().unwrap()], "not a PyTorch checkpoint");
    fails(&["info", "-m", d.join("nowhere").to_str().unwrap()], "not found");
    // wrong shapes and unknown tensors name the tensor
    let wrong = d.join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    let cfg = std::fs::read_to_string(fixtures().join("ph/config.json")).unwrap();
    std::fs::write(wrong.join("config.json"), cfg.replace("\"d_model\": 24", "\"d_model\": 32")).unwrap();
    std::fs::copy(fixtures().join("ph/model.safetensors"), wrong.join("model.safetensors")).unwrap();
    fails(&["info", "-m", wrong.to_str().unwrap()], "expected shape [16, 32], found [16, 24]");
}

#[test]
fn empty_input_gives_header_only() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "empty.fa", b"");
    let o = run(&["embed", &f, "-m", &model("ph")]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8(o.stdout).unwrap().lines().count(), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: the input has no records"));
}

#[test]
fn output_file_appears_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("emb.csv");
    let f = fixtures().join("inputs.fa");
    let out = ok(&["embed", f.to_str().unwrap(), "-m", &model("causal"), "-q", "-o", o.to_str().unwrap()]);
    assert!(out.is_empty());
    assert_eq!(std::fs::read_to_string(&o).unwrap().lines().count(), 5);
}

#[test]
fn broken_pipe_is_a_normal_exit() {
    let mut child = bin()
        .args(["embed", data("data/reads.fq.gz").to_str().unwrap(), "-m", &model("causal"), "-q", "--pool", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 100];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn gz_output_and_skip_bad() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "in.fa", b">a\nACGTACGT\n>empty\n>b\nGGGCCC\n");
    // without --skip-bad the empty record stops the run
    fails(&["embed", &f, "-m", &model("ph")], "record 'empty'");
    let out = dir.path().join("o.csv.gz");
    let o = run(&["embed", &f, "-m", &model("ph"), "--skip-bad", "-o", out.to_str().unwrap()]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("skipped: ") && err.contains("record 'empty'") && err.contains("2 records (1 skipped"), "{err}");
    let gz = std::fs::read(&out).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    let ids: Vec<_> = parse(&text, 2).into_iter().map(|r| r.0).collect();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn regions_of_an_indexed_fasta() {
    let dir = tempfile::tempdir().unwrap();
    let seq = random_dna(1000, 13);
    let wrapped: Vec<String> = seq.chunks(70).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    let fa = write(dir.path(), "g.fa", format!(">chr1 desc\n{}\n>chr2\nACGTACGTAC\n", wrapped.join("\n")).as_bytes());
    fails(&["embed", &fa, "-r", "chr1:1-10", "-m", &model("ph")], "dna-mamba faidx");
    assert!(run(&["faidx", &fa]).status.success());
    // a region equals embedding the same bases as their own record, with genome coordinates
    let sub = write(dir.path(), "sub.fa", format!(">s\n{}\n", String::from_utf8_lossy(&seq[100..300])).as_bytes());
    let want = parse(&ok(&["embed", &sub, "-m", &model("ph"), "-q", "--pool", "none"]), 2);
    let out = ok(&["embed", &fa, "-r", "chr1:101-300", "-m", &model("ph"), "-q", "--pool", "none"]);
    let got = parse(&out, 2);
    assert_eq!(got.len(), 200);
    assert!(out.lines().nth(1).unwrap().starts_with("chr1:101-300,100,"));
    let flat = |v: &[(String, Vec<f32>)]| v.iter().flat_map(|r| r.1.clone()).collect::<Vec<f32>>();
    assert!(rel_err(&flat(&got), &flat(&want)) < 1e-6);
    // BED regions, in order; commas and open ends; errors before any output
    let bed = write(dir.path(), "r.bed", b"# comment\nchr2\t0\t10\tname\t0\t+\nchr1\t100\t300\n");
    let rows = parse(&ok(&["embed", &fa, "--regions", &bed, "-r", "chr1:9,91-", "-m", &model("ph"), "-q"]), 2);
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["chr1:991-1000", "chr2:1-10", "chr1:101-300"]);
    for (region, needle) in [("chr1:990-1001", "outside chr1"), ("chrZ:1-5", "unknown sequence name"), ("chr1:0-5", "1-based")] {
        let o = run(&["embed", &fa, "-r", region, "-m", &model("ph")]);
        assert!(!o.status.success() && o.stdout.is_empty(), "{region}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "{region}");
    }
    let badbed = write(dir.path(), "bad.bed", b"chr1\t5\n");
    fails(&["embed", &fa, "--regions", &badbed, "-m", &model("ph")], "bad.bed: line 1");
}

/// The multi-worker path (one backend per worker; one per GPU with `--device cuda:0,1`) gives
/// byte-identical output in input order, and a device that fails stops the run cleanly.
#[test]
fn workers_keep_input_order_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let reads = data("data/reads.fq.gz");
    let ont = data("data/ont_reads.fq.gz");
    let m = model("ps");
    let (r, o) = (reads.to_str().unwrap(), ont.to_str().unwrap());
    let one = ok(&["embed", r, o, "-m", &m, "--device", "cpu", "-q", "--workers", "1"]);
    for w in ["2", "5"] {
        let many = ok(&["embed", r, o, "-m", &m, "--device", "cpu", "-q", "--workers", w]);
        assert_eq!(many, one, "{w} workers");
    }
    assert_eq!(parse(&one, 2).len(), 350);
    fails(&["embed", reads.to_str().unwrap(), "-m", &model("ps"), "--workers", "2", "--pool", "none"], "pooled output only");
    if std::env::var_os("CUDA_VISIBLE_DEVICES").is_none() {
        let o = dir.path().join("o.csv");
        let out = run(&["embed", reads.to_str().unwrap(), "-m", &model("ps"), "--device", "cuda:0,1", "-o", o.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        // no GPU here: the first worker's device fails; with GPUs the run must succeed
        if !out.status.success() {
            assert!(err.contains("error: worker") && !err.contains("panicked"), "{err}");
            assert!(!o.exists());
        }
    }
}
