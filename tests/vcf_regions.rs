//! Regressions of issue 14 for faidx, regions and score-variants (items 18, 19, 20, the VCF
//! part of 6): each input is crafted here.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dna-mamba"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_string_lossy().into_owned()
}

fn model() -> String {
    fixtures().join("ph").to_string_lossy().into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

// ---- 18: faidx ----

#[test]
fn faidx_indexes_a_fasta_with_a_trailing_blank_line_as_samtools_does() {
    let dir = tempfile::tempdir().unwrap();
    let fa = write(dir.path(), "a.fa", b">a desc\nACGT\nAC\n>b\nGGGG\n\n");
    let o = run(&["faidx", &fa]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fai = std::fs::read_to_string(format!("{fa}.fai")).unwrap();
    assert_eq!(fai, "a\t6\t8\t4\t5\nb\t4\t19\t4\t5\n");
    // and the index serves regions
    let o = run(&["embed", &fa, "-r", "b:1-4", "-m", &model(), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn faidx_errors_name_the_record_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        (&b">a\nACG\nACGT\n"[..], "line 3: sequence 'a' (header on line 1) has lines of different lengths"),
        (b">a\nACGT\nAC\nAC\n", "line 4: sequence 'a'"),
        (b">a\nACGT\n\nACGT\n", "line 4: sequence 'a' (header on line 1) goes on after a blank line"),
        (b">a\nAC\n>a\nAC\n", "line 3: sequence 'a' again (first on line 1)"),
        (b"ACGT\n", "line 1: text before the first '>'"),
    ] {
        let fa = write(dir.path(), "x.fa", text);
        assert_clean_failure(&run(&["faidx", &fa]), "faidx", needle);
    }
}

#[test]
fn a_region_that_reads_two_ways_is_refused_and_braces_quote_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let fa = write(dir.path(), "g.fa", b">chr1\nACGTACGTACGTAAAA\n>chr1:5-8\nGGGGCCCCTTTT\n");
    assert!(run(&["faidx", &fa]).status.success());
    let o = run(&["embed", &fa, "-r", "chr1:5-8", "-m", &model()]);
    assert_clean_failure(&o, "ambiguous region", "ambiguous");
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).contains("{chr1:5-8}") && stderr(&o).contains("{chr1}:5-8"), "{}", stderr(&o));
    let ids = |region: &str| -> Vec<String> {
        let o = run(&["embed", &fa, "-r", region, "-m", &model(), "-q"]);
        assert!(o.status.success(), "{region}: {}", stderr(&o));
        String::from_utf8(o.stdout).unwrap().lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect()
    };
    assert_eq!(ids("{chr1:5-8}"), ["chr1:5-8:1-12"]);
    assert_eq!(ids("{chr1:5-8}:1-2"), ["chr1:5-8:1-2"]);
    assert_eq!(ids("{chr1}:5-8"), ["chr1:5-8"]);
}

#[test]
fn an_index_older_than_its_fasta_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fa = write(dir.path(), "g.fa", b">chr1\nACGTACGTACGT\n");
    assert!(run(&["faidx", &fa]).status.success());
    // the FASTA changes after indexing
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::options().write(true).open(format!("{fa}.fai")).unwrap().set_modified(old).unwrap();
    let o = run(&["embed", &fa, "-r", "chr1:1-4", "-m", &model()]);
    assert_clean_failure(&o, "stale index", "is older than");
    assert!(stderr(&o).contains("re-index"), "{}", stderr(&o));
}

// ---- 20: --regions reads gzip ----

#[test]
fn regions_bed_may_be_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let fa = write(dir.path(), "g.fa", b">chr1\nACGTACGTACGTAAAA\n");
    assert!(run(&["faidx", &fa]).status.success());
    let bed = write(dir.path(), "r.bed.gz", &gzip(b"chr1\t0\t8\nchr1\t4\t12\n"));
    let o = run(&["embed", &fa, "--regions", &bed, "-m", &model(), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<String> = String::from_utf8(o.stdout).unwrap().lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect();
    assert_eq!(ids, ["chr1:1-8", "chr1:5-12"]);
}

// ---- 19 and 6: score-variants ----

const HEAD: &str = "##fileformat=VCFv4.2\n##contig=<ID=c,length=600>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n";

/// A 600-base reference `c`; returns (fasta, its sequence).
fn reference(dir: &Path) -> (String, Vec<u8>) {
    let s = random_dna(600, 5);
    let fa = write(dir, "ref.fa", format!(">c\n{}\n", String::from_utf8_lossy(&s)).as_bytes());
    assert!(run(&["faidx", &fa]).status.success());
    (fa, s)
}

fn other(b: u8) -> char {
    if b == b'A' { 'C' } else { 'A' }
}

fn score(fa: &str, vcf: &str, extra: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = bin();
    c.args(["score-variants", "--vcf", vcf, "--fasta", fa, "-m", &model(), "--context", "200", "--score-context", "51", "--embed-window", "11"]);
    c.args(extra).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn tsv_rows(o: &Output) -> Vec<Vec<String>> {
    assert!(o.status.success(), "{}", stderr(o));
    String::from_utf8(o.stdout.clone()).unwrap().lines().skip(1).map(|l| l.split('\t').map(String::from).collect()).collect()
}

#[test]
fn the_snv_allele_of_a_star_record_is_scored_and_alt_equal_to_ref_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, s) = reference(dir.path());
    let (r, a) = (s[99] as char, other(s[99]));
    let vcf = write(dir.path(), "v.vcf", format!("{HEAD}c\t100\trs7\t{r}\t{a},*\t.\t.\t.\nc\t101\t.\t{}\t{}\t.\t.\t.\n", s[100] as char, s[100] as char).as_bytes());
    let rows = tsv_rows(&score(&fa, &vcf, &["--format", "tsv"], None));
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0][..6], ["c", "100", "rs7", &r.to_string(), &a.to_string(), "scored"]);
    assert!(rows[0][6..10].iter().all(|v| v.parse::<f32>().is_ok()), "{:?}", rows[0]);
    assert_eq!(rows[1][4..7], ["*", "STAR_ALLELE", "NA"]);
    assert_eq!((rows[2][5].as_str(), rows[2][6].as_str(), rows[2][11].as_str()), ("ALT_EQUALS_REF", "NA", "ALT equals REF"));
    // the VCF: scores for the SNV allele, '.' for the star; readable codes per allele
    let o = score(&fa, &vcf, &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let recs: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(recs[0].contains("DNAM_LLR=") && recs[0].contains(",.;") && recs[0].contains("DNAM_SKIP=.,STAR_ALLELE"), "{}", recs[0]);
    assert!(recs[1].contains("DNAM_SKIP=ALT_EQUALS_REF") && !recs[1].contains("DNAM_LLR"), "{}", recs[1]);
    assert!(out.contains("REF_MISMATCH = REF disagrees with the FASTA"), "the header explains the codes");
}

#[test]
fn skip_reasons_in_info_are_short_readable_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, s) = reference(dir.path());
    let wrong = other(s[9]);
    let vcf = write(dir.path(), "v.vcf", format!("{HEAD}c\t10\t.\t{wrong}\tG\t.\t.\t.\nc\t20\t.\tA\tAT\t.\t.\t.\nc\t30\t.\tN\tA\t.\t.\t.\nz\t1\t.\tA\tC\t.\t.\t.\nc\t700\t.\tA\tC\t.\t.\t.\n").as_bytes());
    let o = score(&fa, &vcf, &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    let codes: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).map(|l| l.split("DNAM_SKIP=").nth(1).unwrap()).collect();
    assert_eq!(codes, ["REF_MISMATCH", "NOT_SNV", "UNKNOWN_BASE", "UNKNOWN_SEQUENCE", "PAST_END"]);
    // the readable reason is on stderr and in the TSV
    assert!(stderr(&o).contains(&format!("REF {wrong} disagrees with the FASTA")), "{}", stderr(&o));
    let rows = tsv_rows(&score(&fa, &vcf, &["--format", "tsv"], None));
    assert!(rows[0][11].contains("disagrees with the FASTA") && rows[1][11] == "not an SNV (ALT AT)", "{rows:?}");
}

#[test]
fn plain_gzip_and_stdin_vcf_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, s) = reference(dir.path());
    let text = format!("{HEAD}c\t50\t.\t{}\t{}\t.\t.\t.\n", s[49] as char, other(s[49]));
    let plain = tsv_rows(&score(&fa, &write(dir.path(), "v.vcf", text.as_bytes()), &["--format", "tsv"], None));
    assert_eq!(plain[0][5], "scored");
    let gz = write(dir.path(), "v.vcf.gz", &gzip(text.as_bytes()));
    assert_eq!(tsv_rows(&score(&fa, &gz, &["--format", "tsv"], None)), plain);
    assert_eq!(tsv_rows(&score(&fa, "-", &["--format", "tsv"], Some(text.as_bytes()))), plain);
    assert_eq!(tsv_rows(&score(&fa, "-", &["--format", "tsv"], Some(&gzip(text.as_bytes())))), plain);
}

#[test]
fn zero_contexts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, _) = reference(dir.path());
    let vcf = write(dir.path(), "v.vcf", HEAD.as_bytes());
    for flag in ["--context", "--score-context", "--embed-window"] {
        let o = run(&["score-variants", "--vcf", &vcf, "--fasta", &fa, "-m", &model(), flag, "0"]);
        assert_clean_failure(&o, flag, &format!("{flag} must be at least"));
        assert!(o.stdout.is_empty(), "{flag}");
    }
}

#[test]
fn skip_bad_passes_over_a_malformed_vcf_line_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, s) = reference(dir.path());
    let rec = |p: usize| format!("c\t{p}\t.\t{}\t{}\t.\t.\t.\n", s[p - 1] as char, other(s[p - 1]));
    let vcf = write(dir.path(), "v.vcf", format!("{HEAD}{}c\tnot_a_position\t.\tA\tC\t.\t.\t.\n{}{}", rec(40), rec(41), rec(42)).as_bytes());
    let o = score(&fa, &vcf, &["--format", "tsv", "--skip-bad"], None);
    let rows = tsv_rows(&o);
    let pos: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(pos, ["40", "41", "42"], "the records after the bad line are scored");
    let err = stderr(&o);
    assert!(err.contains("skipped: ") && err.contains("v.vcf: line 5 (record 2)"), "{err}");
    assert!(err.contains("3 records: 3 scored") && err.contains("1 malformed lines skipped"), "{err}");
    // without --skip-bad: one error line naming it, the record before it written
    let o = score(&fa, &vcf, &["--format", "tsv"], None);
    assert_clean_failure(&o, "bad line", "v.vcf: line 5 (record 2): not a VCF record");
    assert_eq!(String::from_utf8(o.stdout).unwrap().lines().count(), 2);
}

#[test]
fn a_truncated_gzip_vcf_fails_after_the_records_read() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, s) = reference(dir.path());
    let mut text = HEAD.to_string();
    for p in 1..=300 {
        text += &format!("c\t{p}\t.\t{}\t{}\t.\t.\t.\n", s[p - 1] as char, other(s[p - 1]));
    }
    let gz = gzip(text.as_bytes());
    let cut = write(dir.path(), "cut.vcf.gz", &gz[..gz.len() * 2 / 3]);
    let o = score(&fa, &cut, &["--format", "tsv", "--scores", "llr", "--skip-bad"], None);
    assert_clean_failure(&o, "truncated gzip", "read failed");
    assert!(stderr(&o).contains("stopped; before it"), "{}", stderr(&o));
}
