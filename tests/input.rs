//! The input side of hardening issue 14: compressed inputs that end early or hold several
//! streams, BGZF without its EOF block, `--skip-bad` after a bad FASTQ record, memory on
//! hostile line structure, the progress display, and messages about inputs.
//! The crafted inputs are generated here with the crates' encoders.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dna-mamba"))
}

fn model() -> String {
    fixtures().join("ph").to_string_lossy().into_owned()
}

fn write(dir: &Path, name: &str, content: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_string_lossy().into_owned()
}

/// `embed FILE` with the tiny fixture model on the CPU, plus `extra` flags.
fn embed(input: &str, extra: &[&str]) -> Output {
    bin().args(["embed", input, "-m", &model(), "--device", "cpu"]).args(extra).stdin(Stdio::null()).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The ids of the CSV rows on stdout (pooled output: one row per record).
fn ids(o: &Output) -> Vec<String> {
    assert!(o.status.success(), "{}", stderr(o));
    String::from_utf8_lossy(&o.stdout).lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect()
}

fn gzip(d: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(d).unwrap();
    e.finish().unwrap()
}
fn bzip2(d: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    e.write_all(d).unwrap();
    e.finish().unwrap()
}
fn xz(d: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(d).unwrap();
    e.finish().unwrap()
}
fn zstd(d: &[u8]) -> Vec<u8> {
    zstd::encode_all(d, 3).unwrap()
}
fn bgzf(d: &[u8]) -> Vec<u8> {
    let mut w = noodles::bgzf::io::Writer::new(Vec::new());
    w.write_all(d).unwrap();
    w.finish().unwrap()
}

/// FASTQ of `n` random 100-base reads named `{prefix}{i}`.
fn fastq(n: usize, prefix: &str, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let seq = random_dna(100, seed + i as u64);
        writeln!(out, "@{prefix}{i}\n{}\n+\n{}", String::from_utf8(seq).unwrap(), "I".repeat(100)).unwrap();
    }
    out
}

// item 1: a cut bz2 or zstd file, a gzip cut in its first bytes, a file holding only a magic
// number: errors, never an empty input
#[test]
fn truncated_compressed_inputs_fail() {
    let dir = tempfile::tempdir().unwrap();
    let reads = fastq(200, "r", 1);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for (ext, enc) in [("gz", gzip as fn(&[u8]) -> Vec<u8>), ("bz2", bzip2), ("xz", xz), ("zst", zstd)] {
        let full = enc(&reads);
        cases.push((format!("half.fq.{ext}"), full[..full.len() / 2].to_vec()));
        cases.push((format!("head.fq.{ext}"), full[..20].to_vec()));
        cases.push((format!("end.fq.{ext}"), full[..full.len() - 1].to_vec()));
    }
    for (ext, magic) in [("gz", &b"\x1f\x8b"[..]), ("bz2", b"BZh"), ("xz", b"\xfd7zXZ\x00"), ("zst", b"\x28\xb5\x2f\xfd")] {
        cases.push((format!("magic.fq.{ext}"), magic.to_vec()));
    }
    for (name, bytes) in cases {
        let f = write(dir.path(), &name, &bytes);
        let o = embed(&f, &[]);
        assert_clean_failure(&o, &name, &name);
        assert!(stderr(&o).contains("truncated or corrupt"), "{name}: {}", stderr(&o));
        // nothing but the header may be on stdout, and --skip-bad must not hide it either
        let o = embed(&f, &["--skip-bad"]);
        assert_clean_failure(&o, &name, "--skip-bad cannot find the next record");
    }
}

// item 2: every stream of a multi-stream bz2 and xz (and gzip, zstd) file is read
#[test]
fn multi_stream_files_are_read_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (fastq(30, "a", 2), fastq(20, "b", 3));
    let want: Vec<String> = (0..30).map(|i| format!("a{i}")).chain((0..20).map(|i| format!("b{i}"))).collect();
    for (ext, enc) in [("bz2", bzip2 as fn(&[u8]) -> Vec<u8>), ("xz", xz), ("gz", gzip), ("zst", zstd)] {
        let mut both = enc(&a);
        both.extend(enc(&b));
        let f = write(dir.path(), &format!("two.fq.{ext}"), &both);
        assert_eq!(ids(&embed(&f, &[])), want, "{ext}");
    }
}

// item 3: a BGZF file cut at a block boundary is read, with htslib's warning
#[test]
fn bgzf_without_eof_marker_warns() {
    let dir = tempfile::tempdir().unwrap();
    let reads = fastq(40, "r", 4);
    let full = bgzf(&reads);
    assert!(full.ends_with(&noodles_eof()));
    let whole = write(dir.path(), "whole.fq.gz", &full);
    let o = embed(&whole, &[]);
    assert_eq!(ids(&o).len(), 40);
    assert!(!stderr(&o).contains("EOF marker"), "{}", stderr(&o));
    let cut = write(dir.path(), "cut.fq.gz", &full[..full.len() - 28]);
    let o = embed(&cut, &[]);
    assert_eq!(ids(&o).len(), 40);
    assert!(stderr(&o).contains("warning: ") && stderr(&o).contains("cut.fq.gz: no BGZF EOF marker; file may be truncated"), "{}", stderr(&o));
}

fn noodles_eof() -> Vec<u8> {
    dna_mamba::io::decompress::BGZF_EOF.to_vec()
}

// item 6: --skip-bad passes over a FASTQ record of known extent and reads on; where it cannot
// find the next record it fails, saying how many records it passed on and skipped
#[test]
fn skip_bad_reads_on_after_a_bad_fastq_record() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.fq", b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n@r3\nGGCC\n+\nIIII\n@r4\n\n+\n\n@r5\nAC\n+\nII\n");
    let o = embed(&bad, &[]);
    assert_clean_failure(&o, "no --skip-bad", "bad.fq: Sequence length is 4 but quality length is 3 (record 'r2' at line 5)");
    let o = embed(&bad, &["--skip-bad"]);
    assert_eq!(ids(&o), ["r1", "r3", "r5"]);
    let err = stderr(&o);
    assert!(err.contains("skipped: ") && err.contains("record 'r2' at line 5") && err.contains("record 'r4'"), "{err}");
    assert!(err.contains("3 records (2 skipped"), "{err}");
    // a record with a quality line of the right length but cut off after: reads on
    let lost = write(dir.path(), "lost.fq", b"@r1\nACGT\n+\nIIII\nACGT\n@r3\nGGCC\n+\nIIII\n");
    let o = embed(&lost, &["--skip-bad"]);
    assert_clean_failure(&o, "unknown extent", "line 5: expected '@' at the start of record 2");
    assert!(stderr(&o).contains("stopped after 1 records passed on and 0 skipped"), "{}", stderr(&o));
    // the record before the error is written
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().skip(1).count(), 1);
}

/// Peak resident memory of `cmd` in bytes (VmHWM, polled while it runs).
fn peak_rss(cmd: &mut Command) -> (Output, u64) {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let status = format!("/proc/{}/status", child.id());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(&status) {
                    if let Some(kb) = s.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                        peak = peak.max(kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0) * 1024);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, watch.join().unwrap())
}

// item 13: memory is bounded by the longest record, not by the number of lines
#[test]
fn memory_does_not_grow_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newlines.fa.gz");
    let mut e = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    e.write_all(b">a\nACGT\n").unwrap();
    let lines = vec![b'\n'; 1 << 20];
    for _ in 0..200 {
        e.write_all(&lines).unwrap();
    }
    // CRLF blank lines and 1-base lines too
    for _ in 0..100_000 {
        e.write_all(b"\r\nC\n").unwrap();
    }
    e.write_all(b">b\nGG\n").unwrap();
    e.finish().unwrap();
    let (o, peak) = peak_rss(bin().args(["embed", path.to_str().unwrap(), "-m", &model(), "--device", "cpu"]));
    assert_eq!(ids(&o), ["a", "b"]);
    let rows = String::from_utf8_lossy(&o.stdout).lines().nth(1).unwrap().split(',').nth(1).unwrap().to_string();
    assert_eq!(rows, (4 + 100_000).to_string());
    // 210 M lines: 8 bytes a line would be 1.7 GB
    assert!(peak > 0 && peak < 150 << 20, "peak RSS {} MB", peak >> 20);
}

// item 17: the display shows records, bases, a human rate and the share of the input read
#[test]
fn progress_shows_records_rate_and_share() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "reads.fq.gz", &gzip(&fastq(50, "r", 5)));
    let o = bin()
        .args(["embed", &f, "-m", &model(), "--device", "cpu", "-o", dir.path().join("o.csv").to_str().unwrap()])
        .env("DNA_MAMBA_PROGRESS", "always")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("50 records, 5,000 bases, ") && err.contains("bases/s") && err.contains("100% of the input read"), "{err}");
    // a rate with an SI prefix or a plain number, never four decimals
    let rate = err.lines().rev().find_map(|l| l.split("bases, ").nth(1)).unwrap().split("bases/s").next().unwrap().trim();
    let decimals = rate.split('.').nth(1).map(|f| f.chars().take_while(char::is_ascii_digit).count()).unwrap_or(0);
    assert!(decimals <= 2 && rate.chars().next().unwrap().is_ascii_digit(), "{rate}");
    // stdin has no size: no share
    let o = bin()
        .args(["embed", "-", "-m", &model(), "--device", "cpu"])
        .env("DNA_MAMBA_PROGRESS", "always")
        .stdin(std::fs::File::open(&f).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(stderr(&o).contains("50 records") && !stderr(&o).contains("% of the input"), "{}", stderr(&o));
    // on a pseudo-terminal the display is drawn without being forced
    let log = dir.path().join("tty.log");
    let cmd = format!("{} embed {f} -m {} --device cpu -o {}", env!("CARGO_BIN_EXE_dna-mamba"), model(), dir.path().join("p.csv").display());
    let o = Command::new("script").args(["-qec", &cmd, log.to_str().unwrap()]).stdin(Stdio::null()).output();
    if let Ok(o) = o {
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        assert!(o.status.success(), "{text}");
        // drawn at all (the share may not be known yet at a run's only tick on a loaded machine;
        // the forced display above checks it)
        assert!(text.contains("records, ") && text.contains("bases/s"), "{text}");
    }
}

// item 20: the unknown-base warning names the file and the first record that had one
#[test]
fn unknown_base_warning_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "iupac.fa", b">a\nACGT\n>b\nACRTYN\n>c\nNNK\n");
    let o = embed(&f, &[]);
    assert_eq!(ids(&o), ["a", "b", "c"]);
    assert!(stderr(&o).contains("warning: 3 bases have no token in the model's vocabulary and were read as [UNK] (the first in ") && stderr(&o).contains("iupac.fa, record 'b')"), "{}", stderr(&o));
}

// item 20: alignment files point to samtools fastq
#[test]
fn alignments_say_to_convert() {
    let dir = tempfile::tempdir().unwrap();
    let bam = write(dir.path(), "x.bam", &bgzf(b"BAM\x01\x00\x00\x00\x00rest"));
    let sam = write(dir.path(), "x.sam", b"@HD\tVN:1.6\n@SQ\tSN:c\tLN:5\nr\t0\tc\t1\t60\t4M\t*\t0\t0\tACGT\tIIII\n");
    let cram = write(dir.path(), "x.cram", b"CRAM\x03\x00rest");
    let named = write(dir.path(), "y.bam", b"\x00\x01junk");
    for f in [bam, sam, cram, named] {
        assert_clean_failure(&embed(&f, &[]), &f, "samtools fastq");
    }
}

// item 20: no input and a terminal on stdin: the usage and a failure, not a wait
#[test]
fn no_input_on_a_terminal_prints_usage() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tty.log");
    let cmd = format!("{} embed -m {} --device cpu", env!("CARGO_BIN_EXE_dna-mamba"), model());
    let Ok(o) = Command::new("timeout").args(["20", "script", "-qec", &cmd, log.to_str().unwrap()]).stdin(Stdio::null()).output() else {
        return; // no `script` here: nothing to test with
    };
    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(!o.status.success(), "{text}");
    assert_ne!(o.status.code(), Some(124), "waited on the terminal: {text}");
    assert!(text.contains("Usage: dna-mamba embed") && text.contains("error: embed: no input file given and stdin is a terminal"), "{text}");
}
