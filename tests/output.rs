//! Regression tests for the output side of the hardening issue (#14): where results go
//! (devices, FIFOs, links, inputs), partial files and signals, BGZF, unique npy names,
//! reserved safetensors names, nothing written before the first record, streaming.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dna-mamba"))
}

fn model() -> String {
    fixtures().join("ph").to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> Output {
    bin().args(args).stdin(Stdio::null()).output().unwrap()
}

fn fasta(dir: &Path, name: &str, records: &[(&str, &[u8])]) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    for (id, seq) in records {
        writeln!(f, ">{id}\n{}", String::from_utf8_lossy(seq)).unwrap();
    }
    p
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".partial-")).collect()
}

/// #4: ids that map to the same safe file name each get their own file, and index.csv points
/// every id at its own file with its own shape.
#[test]
fn npy_file_names_unique_whatever_the_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (random_dna(30, 1), random_dna(40, 2), random_dna(50, 3));
    let input = fasta(dir.path(), "x.fa", &[("a/b", &a), ("a_b", &b), ("a_b_2", &c)]);
    let out = dir.path().join("out");
    let o = run(&["embed", &s(&input), "--model", &model(), "--pool", "none", "--format", "npy", "-o", &s(&out), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let index = std::fs::read_to_string(out.join("index.csv")).unwrap();
    let rows: Vec<Vec<&str>> = index.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{index}");
    let files: std::collections::HashSet<&str> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(files.len(), 3, "two ids share a file: {index}");
    for (r, len) in rows.iter().zip([30, 40, 50]) {
        assert_eq!(r[2], len.to_string());
        let bytes = std::fs::read(out.join(r[1])).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert!(std::str::from_utf8(&bytes[10..10 + header_len]).unwrap().contains(&format!("'shape': ({len}, ")), "{}", r[1]);
    }
}

/// #5: the safetensors format reserves `__metadata__`.
#[test]
fn safetensors_reserved_id_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = fasta(dir.path(), "x.fa", &[("__metadata__", b"ACGT")]);
    let o = run(&["embed", &s(&input), "--model", &model(), "--pool", "none", "--format", "safetensors", "-o", &s(&dir.path().join("x.st"))]);
    assert_clean_failure(&o, "__metadata__ id", "reserved by the safetensors format");
    assert!(!dir.path().join("x.st").exists());
    // and a compressed name is refused, not written uncompressed under it
    let input = fasta(dir.path(), "y.fa", &[("r", b"ACGT")]);
    let o = run(&["embed", &s(&input), "--model", &model(), "--pool", "none", "--format", "safetensors", "-o", &s(&dir.path().join("x.st.gz"))]);
    assert_clean_failure(&o, "-o x.st.gz", "not compressed");
    assert!(!dir.path().join("x.st.gz").exists());
}

/// #9: a symlink's target is replaced and the link kept; an input is never the output.
#[test]
fn output_through_symlink_and_never_onto_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = fasta(dir.path(), "x.fa", &[("r", b"ACGTACGT")]);
    let target = dir.path().join("target.csv");
    std::fs::write(&target, "old").unwrap();
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink("target.csv", &link).unwrap();
    let o = run(&["embed", &s(&input), "--model", &model(), "-o", &s(&link), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced by a file");
    assert!(std::fs::read_to_string(&target).unwrap().starts_with("id,length,"));

    let before = std::fs::read(&input).unwrap();
    let o = run(&["embed", &s(&input), "--model", &model(), "-o", &s(&input)]);
    assert_clean_failure(&o, "-o = input", "refusing to overwrite an input");
    let alias = dir.path().join("alias.fa");
    std::os::unix::fs::symlink("x.fa", &alias).unwrap();
    let o = run(&["embed", &s(&input), "--model", &model(), "-o", &s(&alias)]);
    assert_clean_failure(&o, "-o = a link to the input", "refusing to overwrite an input");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

/// #9: a FIFO is written in place (a reader sees the rows; the FIFO is still a FIFO).
#[test]
fn output_into_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let input = fasta(dir.path(), "x.fa", &[("r", b"ACGTACGT")]);
    let fifo = dir.path().join("out.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let o = run(&["embed", &s(&input), "--model", &model(), "-o", &s(&fifo), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = reader.join().unwrap();
    assert!(text.starts_with("id,length,") && text.lines().count() == 2, "{text}");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(partials(dir.path()).is_empty());
    // /dev/stdout is a link to the pipe the test reads
    let o = run(&["embed", &s(&input), "--model", &model(), "-o", "/dev/stdout", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("id,length,"));
}

/// #9: a character device is written in place, never replaced by a regular file. The node
/// (the null device's numbers) is made in a temporary folder; making one needs root, so
/// without it this test says so and checks nothing else.
#[test]
fn output_onto_a_device_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("null");
    let made = Command::new("mknod").arg(&node).args(["c", "1", "3"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !made {
        eprintln!("SKIPPED output_onto_a_device_node: mknod failed (not root?); the FIFO test covers in-place writing");
        return;
    }
    let input = fasta(dir.path(), "x.fa", &[("r", b"ACGTACGT")]);
    let o = run(&["embed", &s(&input), "--model", &model(), "-o", &s(&node), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&node).unwrap().file_type().is_char_device(), "the device was replaced");
    assert!(partials(dir.path()).is_empty());
}

/// #10: SIGINT, SIGTERM and SIGHUP remove the partial output and exit with 128 + signal. The
/// run waits on an open stdin, so the partial file exists when the signal comes.
#[test]
fn signals_remove_partial_files() {
    for (sig, num) in [("INT", 2), ("TERM", 15), ("HUP", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.csv");
        let mut child = bin().args(["embed", "-", "--model", &model(), "-o", &s(&out), "-q"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, ">r\nACGT").unwrap();
        let t = Instant::now();
        while partials(dir.path()).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(20), "no partial file appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        // the handler thread is installed before any output is opened
        assert!(Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap().success());
        let status = child.wait().unwrap();
        drop(stdin);
        assert_eq!(status.code(), Some(128 + num), "SIG{sig}");
        assert!(partials(dir.path()).is_empty(), "SIG{sig} left {:?}", partials(dir.path()));
        assert!(!out.exists());
    }
}

/// The 28-byte empty block htslib writes last in every BGZF file.
const BGZF_EOF: [u8; 28] = [
    0x1f, 0x8b, 0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x06, 0x00, 0x42, 0x43, 0x02, 0x00, 0x1b, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

fn assert_bgzf(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    // gzip with FEXTRA holding the BC subfield: a BGZF block
    assert_eq!(&bytes[..4], &[0x1f, 0x8b, 0x08, 0x04], "{}: not BGZF", path.display());
    assert_eq!(&bytes[12..14], b"BC", "{}: not BGZF", path.display());
    assert!(bytes.ends_with(&BGZF_EOF), "{}: no BGZF EOF block", path.display());
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
    text
}

/// #11: `.gz` outputs are BGZF (indexable by tabix), for CSV, BED and bedGraph.
#[test]
fn gz_outputs_are_bgzf() {
    let dir = tempfile::tempdir().unwrap();
    let input = fasta(dir.path(), "x.fa", &[("r1", &random_dna(300, 7)), ("r2", &random_dna(200, 8))]);
    let csv = dir.path().join("emb.csv.gz");
    let o = run(&["embed", &s(&input), "--model", &model(), "-o", &s(&csv), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(assert_bgzf(&csv).lines().count(), 3);
    for (fmt, first) in [("bed", "r1\t0\t"), ("bedgraph", "track type=bedGraph")] {
        let out = dir.path().join(format!("x.{fmt}.gz"));
        let o = run(&["classify", &s(&input), "--format", fmt, "-o", &s(&out), "-q"]);
        assert!(o.status.success(), "{fmt}: {}", String::from_utf8_lossy(&o.stderr));
        let text = assert_bgzf(&out);
        assert!(text.starts_with(first), "{fmt}: {text}");
    }
}

/// #12: an input that is not FASTA/FASTQ writes nothing to stdout (no header before the
/// error); an empty input still gives the header and a warning.
#[test]
fn nothing_written_before_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("x.txt");
    std::fs::write(&bad, "hello world\n").unwrap();
    for args in [
        vec!["embed", bad.to_str().unwrap(), "--model", &model()],
        vec!["embed", bad.to_str().unwrap(), "--model", &model(), "--window", "10"],
        vec!["classify", bad.to_str().unwrap()],
        vec!["classify", bad.to_str().unwrap(), "--format", "bedgraph"],
    ] {
        let o = run(&args);
        assert_clean_failure(&o, &format!("{args:?}"), "not FASTA or FASTQ");
        assert!(o.stdout.is_empty(), "{args:?} wrote {:?}", String::from_utf8_lossy(&o.stdout));
    }
    let empty = dir.path().join("empty.fa");
    std::fs::write(&empty, "").unwrap();
    let o = run(&["embed", &s(&empty), "--model", &model()]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("id,length,e0,"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no records"));
    let o = run(&["classify", &s(&empty), "--format", "bedgraph"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("track type=bedGraph"));
}

/// #16: `classify` streams: rows arrive while the input is still being written, and a
/// reader that closes the pipe after two lines ends the run (exit 0) while input remains.
#[test]
fn classify_streams_and_stops_at_a_closed_pipe() {
    let mut child = bin().args(["classify", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // up to a minute of reads, one every 20 ms; stops when classify goes away
        for i in 0..3000u64 {
            let seq = String::from_utf8(random_dna(150, i)).unwrap();
            if writeln!(stdin, ">read{i}\n{seq}").and_then(|_| stdin.flush()).is_err() {
                return i;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        3000
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("id,length,label,"));
    assert!(lines.next().unwrap().unwrap().starts_with("read0,150,"));
    drop(lines);
    let status = child.wait().unwrap();
    let written = writer.join().unwrap();
    assert!(status.success(), "a closed pipe is a normal end: {status:?}");
    assert!(written < 3000, "classify read the whole input before writing");
}

/// #20: messages name flag values as typed, not internal enum names; `info` takes no run
/// flags.
#[test]
fn messages_use_flag_values() {
    let dir = tempfile::tempdir().unwrap();
    let input = fasta(dir.path(), "x.fa", &[("r", b"ACGT")]);
    let o = run(&["embed", &s(&input), "--model", &model(), "--format", "npy"]);
    assert_clean_failure(&o, "npy pooled", "--format npy is for per-position output");
    let o = run(&["embed", &s(&input), "--model", &model(), "--output", "logits"]);
    assert_clean_failure(&o, "logits pooled", "--output logits needs --pool none");
    let o = run(&["info", "--device", "cpu"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unexpected argument '--device'"));
}
