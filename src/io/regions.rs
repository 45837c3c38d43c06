//! Regions of an indexed FASTA (`--region chr:beg-end`, `--regions FILE.bed`), read through
//! noodles without loading whole sequences.

use std::io::BufRead;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use noodles::core::{Position, Region};
use noodles::fasta;

/// A stretch of one sequence: 0-based, half-open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub name: String,
    pub start: usize,
    pub end: usize,
}

impl Span {
    /// samtools-style label, 1-based inclusive.
    pub fn label(&self) -> String {
        format!("{}:{}-{}", self.name, self.start + 1, self.end)
    }
}

/// Parse `chr`, `chr:beg`, `chr:beg-` or `chr:beg-end` (1-based, inclusive, commas allowed)
/// against the sequence lengths of an index, as htslib's hts_parse_region does: a name that
/// is itself in the index is the whole sequence, `{name}` and `{name}:beg-end` quote a name
/// holding ':', and a text that reads both ways (`chr1:5-8` when `chr1:5-8` and `chr1` both
/// exist) is refused as ambiguous.
pub fn parse_region(text: &str, lengths: &dyn Fn(&str) -> Option<usize>) -> Result<Span> {
    let bad = |why: &str| anyhow!("region '{text}': {why}");
    let (name, range) = if let Some(rest) = text.strip_prefix('{') {
        let (name, after) = rest.split_once('}').ok_or_else(|| bad("no '}' after '{'"))?;
        let len = lengths(name).ok_or_else(|| bad(&format!("unknown sequence name '{name}'")))?;
        match after {
            "" => return Ok(Span { name: name.to_string(), start: 0, end: len }),
            _ => (name, after.strip_prefix(':').ok_or_else(|| bad("expected ':' or the end after '}'"))?),
        }
    } else {
        let split = text.rsplit_once(':').filter(|(n, _)| lengths(n).is_some());
        if let Some(len) = lengths(text) {
            if let Some((n, r)) = split {
                bail!(bad(&format!("ambiguous: a sequence is named '{text}' and '{n}' also exists; write {{{text}}} for the sequence or {{{n}}}:{r} for the range")));
            }
            return Ok(Span { name: text.to_string(), start: 0, end: len });
        }
        let (name, range) = text.rsplit_once(':').ok_or_else(|| bad("unknown sequence name"))?;
        if split.is_none() {
            bail!(bad(&format!("unknown sequence name '{name}'")));
        }
        (name, range)
    };
    let len = lengths(name).expect("checked above");
    let num = |s: &str| -> Result<usize> {
        s.replace(',', "").parse::<usize>().map_err(|_| bad(&format!("'{s}' is not a position")))
    };
    let (beg, end) = match range.split_once('-') {
        None => (num(range)?, len),
        Some((b, "")) => (num(b)?, len),
        Some((b, e)) => (num(b)?, num(e)?),
    };
    if beg == 0 {
        bail!(bad("positions are 1-based"));
    }
    if beg > end {
        bail!(bad("begin is after end"));
    }
    if end > len {
        bail!(bad(&format!("outside {name}, which has {len} bases")));
    }
    Ok(Span { name: name.to_string(), start: beg - 1, end })
}

/// BED intervals, plain or gzip/bgzf (0-based, half-open; extra columns ignored; `#`, track and browser lines skipped).
pub fn read_bed(path: &Path, lengths: &dyn Fn(&str) -> Option<usize>) -> Result<Vec<Span>> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| name.clone())?;
    // gzip and bgzf BED read as `train --bed` reads them
    parse_bed(super::vcf::maybe_gunzip(Box::new(file)).with_context(|| name.clone())?, &name, lengths)
}

/// `read_bed` over any buffered reader; `name` is for messages.
pub fn parse_bed(input: impl BufRead, name: &str, lengths: &dyn Fn(&str) -> Option<usize>) -> Result<Vec<Span>> {
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("{name}: line {}", i + 1))?;
        let Some(bed) = super::bed::parse_line(&line, i + 1, name)? else { continue };
        let (chrom, start, end) = (bed.chrom.to_string(), bed.start, bed.end);
        let len = lengths(&chrom).ok_or_else(|| anyhow!("{name}: line {}: unknown sequence name '{chrom}'", i + 1))?;
        if start >= end || end > len {
            bail!("{name}: line {}: interval {chrom}:{start}-{end} is empty or outside {chrom} ({len} bases)", i + 1);
        }
        out.push(Span { name: chrom, start, end });
    }
    Ok(out)
}

/// An indexed FASTA (plain with .fai, or bgzf with .fai and .gzi).
pub struct IndexedFasta {
    reader: fasta::io::IndexedReader<fasta::io::BufReader<std::fs::File>>,
    pub name: String,
}

impl IndexedFasta {
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        // an index older than its FASTA may point at the wrong bytes: refuse it, as a stale
        // index gives wrong bases silently
        let mut fai = path.as_os_str().to_owned();
        fai.push(".fai");
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if let (Some(fa), Some(ix)) = (mtime(path), mtime(Path::new(&fai))) {
            if ix < fa {
                bail!("{name}.fai is older than {name}: re-index it with `dna-mamba faidx {name}` (or `samtools faidx`)");
            }
        }
        let reader = fasta::io::indexed_reader::Builder::default().build_from_path(path).map_err(|e| {
            anyhow!("{name}: cannot open as an indexed FASTA ({e}); index it with `dna-mamba faidx` or `samtools faidx` (bgzf .gz also needs .gzi)")
        })?;
        Ok(IndexedFasta { reader, name })
    }

    pub fn length(&self, chrom: &str) -> Option<usize> {
        self.reader.index().as_ref().iter().find(|r| r.name() == chrom.as_bytes()).map(|r| r.length() as usize)
    }

    /// Bases `start..end` (0-based, half-open) of `chrom`.
    pub fn fetch(&mut self, chrom: &str, start: usize, end: usize) -> Result<Vec<u8>> {
        let region = Region::new(chrom, Position::try_from(start + 1)?..=Position::try_from(end)?);
        let rec = self.reader.query(&region).with_context(|| format!("{}: {chrom}:{}-{end}", self.name, start + 1))?;
        Ok(rec.sequence().as_ref().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samtools_region_syntax() {
        let lens = |n: &str| match n {
            "chr1" => Some(1_000_000),
            "HLA:1" => Some(50),
            _ => None,
        };
        let p = |t: &str| parse_region(t, &lens);
        assert_eq!(p("chr1").unwrap(), Span { name: "chr1".into(), start: 0, end: 1_000_000 });
        assert_eq!(p("chr1:1,001-2,000").unwrap(), Span { name: "chr1".into(), start: 1000, end: 2000 });
        assert_eq!(p("chr1:999,999-").unwrap().end, 1_000_000);
        assert_eq!(p("chr1:5").unwrap().start, 4);
        assert_eq!(p("HLA:1").unwrap().end, 50);
        assert_eq!(p("HLA:1:2-3").unwrap(), Span { name: "HLA:1".into(), start: 1, end: 3 });
        assert_eq!(p("{HLA:1}:2-3").unwrap(), Span { name: "HLA:1".into(), start: 1, end: 3 });
        assert_eq!(p("{chr1}").unwrap().end, 1_000_000);
        for bad in ["chr2:1-5", "chr1:0-5", "chr1:10-5", "chr1:1-1000001", "chr1:x-5", "nochr", "{chr1", "{chr1}x", "{chr2}", "{HLA:1}:60-70"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bed_lines() {
        let lens = |n: &str| (n == "chr1").then_some(100);
        let ok = parse_bed(&b"track x\n#c\nchr1\t0\t10\tname\t0\t+\nchr1\t90\t100\r\n"[..], "t", &lens).unwrap();
        assert_eq!(ok, vec![Span { name: "chr1".into(), start: 0, end: 10 }, Span { name: "chr1".into(), start: 90, end: 100 }]);
        for bad in [&b"chr1\t5\n"[..], b"chr1\t5\tx\n", b"chr1\t5\t101\n", b"chr1\t5\t5\n", b"chr2\t1\t2\n", b"\t1\t2\n"] {
            let e = parse_bed(bad, "t", &lens).unwrap_err().to_string();
            assert!(e.starts_with("t: line 1: "), "{e}");
        }
    }

    /// htslib's rules for a name that holds a range: ambiguous unless quoted with braces.
    #[test]
    fn a_name_that_reads_as_a_range_needs_braces() {
        let lens = |n: &str| match n {
            "chr1" => Some(100),
            "chr1:5-8" => Some(20),
            _ => None,
        };
        let e = parse_region("chr1:5-8", &lens).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("{chr1:5-8}") && e.contains("{chr1}:5-8"), "{e}");
        assert_eq!(parse_region("{chr1:5-8}", &lens).unwrap(), Span { name: "chr1:5-8".into(), start: 0, end: 20 });
        assert_eq!(parse_region("{chr1:5-8}:1-2", &lens).unwrap(), Span { name: "chr1:5-8".into(), start: 0, end: 2 });
        assert_eq!(parse_region("{chr1}:5-8", &lens).unwrap(), Span { name: "chr1".into(), start: 4, end: 8 });
    }

    /// A fuzzer find: this line made noodles-bed 0.40 panic (slice index out of range).
    #[test]
    fn bed_line_that_crashed_noodles() {
        let line = b"chr1\tJ10\r\r\t\t\r\r\r9160\t6c";
        assert!(parse_bed(&line[..], "t", &|_| Some(100_000)).is_err());
    }
}
