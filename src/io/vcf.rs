//! VCF records for `score-variants`, one line at a time from a file or `-` (stdin), plain or
//! gzip (bgzf is multi-member gzip, so one decoder reads both). A malformed line is reported
//! with its line number and the reader goes on with the next line; a stream that cannot be
//! read further (I/O or decompression error) ends the records.

use std::io::{BufRead, BufReader, Read};

use anyhow::{anyhow, bail, Context, Result};
use noodles::vcf;
use noodles::vcf::variant::io::Write as _;

/// One record and the line it came from (1-based).
pub struct Record {
    pub line: usize,
    pub record: vcf::variant::RecordBuf,
}

/// What went wrong with the next record.
#[derive(Debug)]
pub enum Bad {
    /// This line is not a VCF record; the next line can still be read.
    Line { line: usize, error: anyhow::Error },
    /// The input cannot be read further.
    Stream(anyhow::Error),
}

pub struct VcfReader {
    input: Option<Box<dyn BufRead>>,
    name: String,
    header: vcf::Header,
    line: usize,
    /// data lines so far, malformed ones included
    records: usize,
    buf: Vec<u8>,
    scratch: vcf::io::Writer<Vec<u8>>,
}

/// `input` with gzip (and bgzf) undone when it starts with the gzip magic.
pub fn maybe_gunzip(mut input: Box<dyn Read>) -> std::io::Result<Box<dyn BufRead>> {
    let mut magic = Vec::with_capacity(2);
    (&mut input).take(2).read_to_end(&mut magic)?;
    let whole = std::io::Cursor::new(magic.clone()).chain(input);
    Ok(if magic == [0x1f, 0x8b] {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(whole)))
    } else {
        Box::new(BufReader::new(whole))
    })
}

impl VcfReader {
    /// `-` reads stdin.
    pub fn open(path: &str) -> Result<Self> {
        if path == "-" {
            return Self::from_read("<stdin>", Box::new(std::io::stdin()));
        }
        if std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false) {
            bail!("{path}: is a directory, not a VCF file");
        }
        let file = std::fs::File::open(path).with_context(|| path.to_string())?;
        Self::from_read(path, Box::new(file))
    }

    /// Read the header (every line up to and including `#CHROM`) from any byte stream;
    /// `name` is for messages.
    pub fn from_read(name: &str, input: Box<dyn Read>) -> Result<Self> {
        let mut input = maybe_gunzip(input).with_context(|| name.to_string())?;
        let mut text = String::new();
        let mut buf = Vec::new();
        let mut line = 0;
        loop {
            buf.clear();
            let n = input.read_until(b'\n', &mut buf).with_context(|| format!("{name}: line {}: read failed (truncated or corrupt input?)", line + 1))?;
            if n == 0 {
                if line == 0 {
                    bail!("{name}: empty input, not a VCF file (no header)");
                }
                bail!("{name}: the header has no #CHROM line (not a VCF file?)");
            }
            line += 1;
            let l = std::str::from_utf8(&buf).map_err(|_| anyhow!("{name}: line {line}: not UTF-8 text"))?;
            if !l.starts_with('#') {
                bail!("{name}: line {line}: the header has no #CHROM line (not a VCF file?)");
            }
            text.push_str(l.trim_end_matches(['\n', '\r']));
            text.push('\n');
            if l.starts_with("#CHROM") {
                break;
            }
        }
        let header: vcf::Header = text.parse().map_err(|e| anyhow!("{name}: bad VCF header: {e}"))?;
        Ok(VcfReader { input: Some(input), name: name.to_string(), header, line, records: 0, buf, scratch: vcf::io::Writer::new(Vec::new()) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn header(&self) -> &vcf::Header {
        &self.header
    }

    /// The header with extra INFO definitions, for the output.
    pub fn header_mut(&mut self) -> &mut vcf::Header {
        &mut self.header
    }

    /// The next record; blank lines are passed over.
    pub fn next_record(&mut self) -> Option<std::result::Result<Record, Bad>> {
        loop {
            let input = self.input.as_mut()?;
            self.buf.clear();
            match input.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.input = None;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.input = None;
                    let what = anyhow!("{}: line {}: read failed (truncated or corrupt input?): {e}", self.name, self.line + 1);
                    return Some(Err(Bad::Stream(what)));
                }
            }
            self.line += 1;
            let line = self.line;
            if self.buf.iter().all(|b| matches!(b, b'\n' | b'\r')) {
                continue;
            }
            self.records += 1;
            let (name, records) = (&self.name, self.records);
            let bad = |why: &str| Some(Err(Bad::Line { line, error: anyhow!("{name}: line {line} (record {records}): {why}") }));
            let Ok(text) = std::str::from_utf8(&self.buf) else {
                return bad("not UTF-8 text");
            };
            let text = text.trim_end_matches(['\n', '\r']);
            if text.starts_with('#') {
                return bad("a header line after the records");
            }
            // noodles reads extra columns as samples and writes them back where they re-read
            // differently (a fuzzer find): the columns must be those the header names
            let samples = self.header.sample_names().len();
            let want = if samples == 0 { 8 } else { 9 + samples };
            let got = text.split('\t').count();
            if got != want {
                return bad(&format!("{got} columns where the header has {want}"));
            }
            let mut record = vcf::variant::RecordBuf::default();
            return match vcf::io::Reader::new(text.as_bytes()).read_record_buf(&self.header, &mut record) {
                // noodles reads some fields it refuses to write (INFO keys such as `2@x`, REF
                // letters that are not bases; fuzzer finds): refuse those here, where --skip-bad
                // can pass over the line, not when the output is written
                Ok(_) => {
                    self.scratch.get_mut().clear();
                    match self.scratch.write_variant_record(&self.header, &record) {
                        Err(e) => bad(&format!("not a VCF record (cannot be written back: {e})")),
                        Ok(()) => Some(Ok(Record { line, record })),
                    }
                }
                Err(e) => bad(&format!("not a VCF record: {e}")),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n";

    fn lines(text: &[u8]) -> Vec<std::result::Result<usize, (bool, usize, String)>> {
        let mut r = VcfReader::from_read("t.vcf", Box::new(std::io::Cursor::new(text.to_vec()))).unwrap();
        let mut out = Vec::new();
        while let Some(x) = r.next_record() {
            out.push(match x {
                Ok(rec) => Ok(rec.line),
                Err(Bad::Line { line, error }) => Err((true, line, error.to_string())),
                Err(Bad::Stream(e)) => Err((false, 0, e.to_string())),
            });
        }
        out
    }

    #[test]
    fn a_malformed_line_is_named_and_the_next_one_read() {
        let v = lines(format!("{HEAD}c\t5\t.\tA\tC\t.\t.\t.\nc\tx\t.\tA\tC\t.\t.\t.\n\nc\t7\t.\tA\tC\t.\t.\t.\r\n").as_bytes());
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], Ok(3));
        assert!(matches!(&v[1], Err((true, 4, e)) if e.starts_with("t.vcf: line 4 (record 2): ")), "{v:?}");
        assert_eq!(v[2], Ok(6));
    }

    /// A fuzzer find: a line with more columns than the header was read, and written back as
    /// a record that reads back with another REF.
    #[test]
    fn a_line_with_other_columns_than_the_header_is_malformed() {
        let v = lines(format!("{HEAD}chr1\t6\t.\tD\tA\t.\trs1\t\t\t\t7\tC\nc\t5\t.\tA\tC\t.\t.\n").as_bytes());
        assert!(matches!(&v[0], Err((true, 3, e)) if e.contains("12 columns where the header has 8")), "{v:?}");
        assert!(matches!(&v[1], Err((true, 4, e)) if e.contains("7 columns")), "{v:?}");
        // an INFO key noodles reads but will not write
        let v = lines(format!("{HEAD}c\t7\t.\tAC\tA\t.\tq10\t2@iDP=1\nc\t5\t.\tA\tC\t.\t.\t.\n").as_bytes());
        assert!(matches!(&v[0], Err((true, 3, e)) if e.contains("cannot be written back")), "{v:?}");
        assert_eq!(v[1], Ok(4));
    }

    #[test]
    fn plain_gzip_is_read() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(format!("{HEAD}c\t5\t.\tA\tC\t.\t.\t.\n").as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(lines(&gz), [Ok(3)]);
        // cut short: an error, not a silent end
        let cut = &gz[..gz.len() - 6];
        let r = VcfReader::from_read("t", Box::new(std::io::Cursor::new(cut.to_vec())));
        let errored = match r {
            Err(_) => true,
            Ok(mut r) => std::iter::from_fn(|| r.next_record()).any(|x| matches!(x, Err(Bad::Stream(_)))),
        };
        assert!(errored);
    }

    #[test]
    fn headers_that_are_not_vcf_are_refused() {
        for bad in [&b""[..], b"##fileformat=VCFv4.2\nc\t5\n", b">x\nACGT\n"] {
            assert!(VcfReader::from_read("t", Box::new(std::io::Cursor::new(bad.to_vec()))).is_err());
        }
    }
}
