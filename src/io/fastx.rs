//! FASTA/FASTQ records from a file or `-` (stdin), compression sniffed from the bytes
//! ([`super::decompress`]), with line numbers for messages.
//!
//! A small parser of our own rather than needletail (which kept a Vec of line offsets, 8 bytes a
//! line, and stopped for good at the first bad record) or noodles (no line numbers, no way to go
//! on after a bad record). It holds one record's bases and header and a fixed read buffer: a
//! FASTQ quality line, the `+` line and blank lines are counted, never stored, so memory is
//! bounded by the longest record whatever the line structure.
//!
//! FASTA: a `>` header, then sequence lines up to the next `>` line (blank lines ignored).
//! FASTQ: four-line records (header `@`, one sequence line, `+` line, one quality line; blank
//! lines between records ignored); multi-line FASTQ is not read. Line ends `\n` or `\r\n`.
//! Bases are passed on as written (case, IUPAC codes): tokenizing decides what they mean.

use std::io::{self, Read};

use anyhow::{anyhow, Result};

use super::decompress::{Compression, Decoder};

/// One owned record. `id` is the header up to the first whitespace (samtools convention).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub seq: Vec<u8>,
    /// 1-based line of the header, for messages.
    pub line: u64,
    /// The rest of the header after the id and its whitespace (may be empty).
    pub desc: String,
}

/// A record that could not be read. With `skippable` the reader has passed over the whole bad
/// record (its extent was known: a FASTQ quality line of the wrong length, a record cut off by
/// the end of the input) and the next call reads on; otherwise the reader has stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {what}")]
pub struct ReadError {
    pub name: String,
    pub what: String,
    pub skippable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Fasta,
    Fastq,
    /// No bytes (or only line ends) after decompression: valid, with no records.
    Empty,
}

/// Room for decompressed text ahead of the parser: a fixed amount, whatever the lines.
const BUFFER: usize = 64 * 1024;

pub struct Reader {
    input: Input,
    name: String,
    format: Format,
    /// Lines consumed so far: the next line is `line + 1`.
    line: u64,
    /// Records started so far (the one being read included), for messages.
    records: usize,
    /// The record (or error) that the next call returns; `None` once the input has ended.
    next: Option<std::result::Result<Record, ReadError>>,
    header: Vec<u8>,
}

impl Reader {
    /// Opens `path` (`-` reads stdin), recognises its compression and format, and reads its
    /// first record. `Ok` means the input is FASTA, FASTQ or empty (no records): nothing has to
    /// be written before that is known. An error on the first record that the reader can pass
    /// over (see [`ReadError`]) still comes from the first [`next_record`](Self::next_record).
    pub fn open(path: &str) -> Result<Self> {
        if path == "-" {
            return Self::from_read("<stdin>", std::io::stdin());
        }
        let meta = std::fs::metadata(path).map_err(|e| anyhow!("{path}: {e}"))?;
        if meta.is_dir() {
            return Err(anyhow!("{path}: is a directory, not a FASTA/FASTQ file"));
        }
        let file = std::fs::File::open(path).map_err(|e| anyhow!("{path}: {e}"))?;
        Self::from_read(path, file)
    }

    /// Records from any byte stream (compression sniffed as for files); `name` is for messages.
    pub fn from_read(name: &str, read: impl Read + Send + 'static) -> Result<Self> {
        let decoder = Decoder::new(Box::new(read)).map_err(|e| anyhow!("{name}: {e}"))?;
        let mut r = Reader {
            input: Input::new(decoder),
            name: name.to_string(),
            format: Format::Empty,
            line: 0,
            records: 0,
            next: None,
            header: Vec::new(),
        };
        r.format = r.sniff()?;
        r.next = r.parse();
        match &r.next {
            Some(Err(e)) if !e.skippable => Err(anyhow!("{e}")),
            _ => Ok(r),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn compression(&self) -> Compression {
        self.input.src.compression()
    }

    /// Raw (compressed) bytes taken from the input so far, for the share of it read.
    pub fn bytes_read(&self) -> u64 {
        self.input.src.bytes_read()
    }

    /// What the next [`next_record`](Self::next_record) returns, without taking it.
    pub fn peek(&self) -> Option<&std::result::Result<Record, ReadError>> {
        self.next.as_ref()
    }

    /// Once the records have ended: a warning about the input (a BGZF file without its EOF
    /// block), without the file name.
    pub fn warning(&self) -> Option<String> {
        self.input.src.warning()
    }

    /// The next record, or an error naming the file and the record or line.
    pub fn next_record(&mut self) -> Option<std::result::Result<Record, ReadError>> {
        let out = self.next.take()?;
        let stopped = matches!(&out, Err(e) if !e.skippable);
        if !stopped {
            self.next = self.parse();
        }
        Some(out)
    }

    fn sniff(&mut self) -> Result<Format> {
        self.skip_blank_lines().map_err(|e| self.io_error(e))?;
        let head = match self.input.fill(4) {
            Ok(h) => h,
            Err(e) => return Err(self.io_error(e).into()),
        };
        match head.first() {
            None => Ok(Format::Empty),
            Some(b'>') => Ok(Format::Fasta),
            Some(b'@') => Ok(Format::Fastq),
            Some(&b) => Err(anyhow!("{}: {}", self.name, not_fastx(&self.name, head, b))),
        }
    }

    fn parse(&mut self) -> Option<std::result::Result<Record, ReadError>> {
        let parsed = match self.format {
            Format::Empty => return None,
            Format::Fasta => self.fasta(),
            Format::Fastq => self.fastq(),
        };
        match parsed {
            Ok(Some(rec)) => Some(Ok(rec)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn error(&self, what: String, skippable: bool) -> ReadError {
        ReadError { name: self.name.clone(), what, skippable }
    }

    /// A read failure (a decompression error included) stops the reader.
    fn io_error(&self, e: io::Error) -> ReadError {
        self.error(format!("record {}: read failed (truncated or corrupt input?): {e}", self.records.max(1)), false)
    }

    /// Starts a record at a header line whose first byte (`>` or `@`) is next.
    fn header(&mut self) -> std::result::Result<(String, String, u64), ReadError> {
        self.records += 1;
        let mut header = std::mem::take(&mut self.header);
        header.clear();
        let got = self.line_into(&mut header);
        let line = self.line;
        let split = got.map_err(|e| self.io_error(e)).map(|_| {
            let text = &header[1.min(header.len())..];
            let end = text.iter().position(|b| b.is_ascii_whitespace()).unwrap_or(text.len());
            let desc = text[end..].trim_ascii();
            (String::from_utf8_lossy(&text[..end]).into_owned(), String::from_utf8_lossy(desc).into_owned())
        });
        self.header = header;
        let (id, desc) = split?;
        Ok((id, desc, line))
    }

    fn fasta(&mut self) -> std::result::Result<Option<Record>, ReadError> {
        if self.peek_byte().map_err(|e| self.io_error(e))?.is_none() {
            return Ok(None);
        }
        let (id, desc, line) = self.header()?;
        let mut seq = Vec::new();
        loop {
            // runs of blank lines are common in hostile input: skip them a buffer at a time
            self.skip_blank_lines().map_err(|e| self.io_error(e))?;
            match self.peek_byte().map_err(|e| self.io_error(e))? {
                None | Some(b'>') => break,
                Some(_) => self.line_into(&mut seq).map_err(|e| self.io_error(e))?,
            };
        }
        Ok(Some(Record { id, seq, line, desc }))
    }

    fn fastq(&mut self) -> std::result::Result<Option<Record>, ReadError> {
        self.skip_blank_lines().map_err(|e| self.io_error(e))?;
        match self.peek_byte().map_err(|e| self.io_error(e))? {
            None => return Ok(None),
            Some(b'@') => {}
            Some(b) => {
                let what = match self.records {
                    0 => format!("line {}: expected '@' at the start of a FASTQ record but found '{}'", self.line + 1, b.escape_ascii()),
                    n => format!(
                        "line {}: expected '@' at the start of record {} but found '{}' (multi-line FASTQ is not read)",
                        self.line + 1,
                        n + 1,
                        b.escape_ascii()
                    ),
                };
                return Err(self.error(what, false));
            }
        }
        let (id, desc, line) = self.header()?;
        if self.records == 1 && is_sam_header(&self.header) {
            return Err(self.error(samtools_hint("a SAM file", &self.name), false));
        }
        let at = || format!("record '{id}' at line {line}");
        // a record that the end of the input cuts short: nothing follows it, so it can be passed over
        let cut = |r: &Self, what: &str| r.error(format!("{}: the input ends inside the record ({what})", at()), true);
        let mut seq = Vec::new();
        if !self.line_into(&mut seq).map_err(|e| self.io_error(e))? {
            return Err(cut(self, "no sequence line"));
        }
        match self.peek_byte().map_err(|e| self.io_error(e))? {
            None => return Err(cut(self, "no '+' line")),
            Some(b'+') => {}
            Some(b) => {
                let what = format!(
                    "Expected '+' separator but found '{}' on line {} ({}; multi-line FASTQ is not read)",
                    b.escape_ascii(),
                    self.line + 1,
                    at()
                );
                return Err(self.error(what, false));
            }
        }
        self.skip_line().map_err(|e| self.io_error(e))?;
        let qual = match self.skip_line().map_err(|e| self.io_error(e))? {
            Some(n) => n,
            None => return Err(cut(self, "no quality line")),
        };
        if qual != seq.len() {
            let what = format!("Sequence length is {} but quality length is {qual} ({})", seq.len(), at());
            return Err(self.error(what, true));
        }
        Ok(Some(Record { id, seq, line, desc }))
    }

    fn peek_byte(&mut self) -> io::Result<Option<u8>> {
        Ok(self.input.fill(1)?.first().copied())
    }

    /// Passes over empty lines (`\n`, `\r\n`), counting them.
    fn skip_blank_lines(&mut self) -> io::Result<()> {
        loop {
            let buf = self.input.fill(2)?;
            let n = buf.iter().take_while(|&&b| b == b'\n').count();
            if n > 0 {
                self.line += n as u64;
                self.input.consume(n);
            } else if buf.starts_with(b"\r\n") {
                self.line += 1;
                self.input.consume(2);
            } else {
                return Ok(());
            }
        }
    }

    /// Appends the next line without its end (`\n` or `\r\n`) to `out`; false at the end.
    fn line_into(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        let start = out.len();
        let mut any = false;
        loop {
            let buf = self.input.fill(1)?;
            if buf.is_empty() {
                break;
            }
            any = true;
            match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    out.extend_from_slice(&buf[..i]);
                    self.input.consume(i + 1);
                    break;
                }
                None => {
                    out.extend_from_slice(buf);
                    let n = buf.len();
                    self.input.consume(n);
                }
            }
        }
        if any {
            self.line += 1;
            if out.len() > start && out.last() == Some(&b'\r') {
                out.pop();
            }
        }
        Ok(any)
    }

    /// The length of the next line without its end, not kept; None at the end.
    fn skip_line(&mut self) -> io::Result<Option<usize>> {
        let (mut len, mut last, mut any) = (0usize, 0u8, false);
        loop {
            let buf = self.input.fill(1)?;
            let Some(&end) = buf.last() else { break };
            any = true;
            match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    if i > 0 {
                        last = buf[i - 1];
                    }
                    len += i;
                    self.input.consume(i + 1);
                    break;
                }
                None => {
                    len += buf.len();
                    last = end;
                    let n = buf.len();
                    self.input.consume(n);
                }
            }
        }
        if !any {
            return Ok(None);
        }
        self.line += 1;
        Ok(Some(if last == b'\r' && len > 0 { len - 1 } else { len }))
    }
}

/// Decompressed bytes with a fixed buffer that, unlike `BufReader`, can be asked for a few bytes
/// more than it holds (to see a `\r\n` or a magic number across a refill).
struct Input {
    src: Decoder,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
}

impl Input {
    fn new(src: Decoder) -> Self {
        Input { src, buf: vec![0; BUFFER].into_boxed_slice(), pos: 0, end: 0 }
    }

    /// The buffered bytes, at least `n` (a few) of them unless the input ends first.
    fn fill(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.end - self.pos < n {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            }
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => break,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

/// Whether a FASTQ-looking first header is a SAM header line (`@HD`, `@SQ`, ... and a tab).
fn is_sam_header(header: &[u8]) -> bool {
    header.len() > 3 && header[3] == b'\t' && [b"@HD", b"@SQ", b"@RG", b"@PG", b"@CO"].iter().any(|t| header[..3] == t[..])
}

fn samtools_hint(what: &str, name: &str) -> String {
    let to = if name == "<stdin>" { "-".to_string() } else { name.to_string() };
    format!("{what}, not FASTA or FASTQ: convert it first with `samtools fastq {to} > reads.fq`")
}

/// The message for input that starts with neither `>` nor `@` (`head`: its first bytes).
fn not_fastx(name: &str, head: &[u8], first: u8) -> String {
    let lower = name.to_ascii_lowercase();
    if head.starts_with(b"BAM\x01") || lower.ends_with(".bam") {
        return samtools_hint("a BAM file", name);
    }
    if head.starts_with(b"CRAM") || lower.ends_with(".cram") {
        return samtools_hint("a CRAM file", name);
    }
    if lower.ends_with(".sam") {
        return samtools_hint("a SAM file", name);
    }
    format!("not FASTA or FASTQ: Expected '@' or '>' at the start of the file but found '{}'", first.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> Result<Reader> {
        Reader::from_read("t", std::io::Cursor::new(bytes.to_vec()))
    }

    /// (id, seq) of every record, and the first error's text.
    fn all(bytes: &[u8]) -> (Vec<(String, String)>, Vec<String>) {
        let mut r = reader(bytes).unwrap();
        let (mut recs, mut errs) = (Vec::new(), Vec::new());
        while let Some(x) = r.next_record() {
            match x {
                Ok(rec) => recs.push((rec.id, String::from_utf8(rec.seq).unwrap())),
                Err(e) => errs.push(e.to_string()),
            }
        }
        (recs, errs)
    }

    fn ids(v: &[(String, String)]) -> Vec<&str> {
        v.iter().map(|r| r.0.as_str()).collect()
    }

    #[test]
    fn fasta_multiline_crlf_blank_lines() {
        let (recs, errs) = all(b"\n>a desc here\r\nAC\r\n\r\ngt\n\n>b\n>c x\nN\n\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(recs, [("a".into(), "ACgt".into()), ("b".into(), "".into()), ("c".into(), "N".into())]);
        let mut r = reader(b">a desc here\nAC\n>b\nG").unwrap();
        let a = r.next_record().unwrap().unwrap();
        assert_eq!((a.desc.as_str(), a.line), ("desc here", 1));
        assert_eq!(r.next_record().unwrap().unwrap().line, 3);
        assert!(r.next_record().is_none());
    }

    #[test]
    fn fastq_records_and_lines() {
        let (recs, errs) = all(b"@r1 x\r\nACGT\r\n+r1\r\nII@I\r\n\n@r2\nAC\n+\n@@\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(ids(&recs), ["r1", "r2"]);
        let mut r = reader(b"@r1\nACGT\n+\nIIII\n@r2\nA\n+\nI").unwrap();
        assert_eq!(r.next_record().unwrap().unwrap().line, 1);
        assert_eq!(r.next_record().unwrap().unwrap().line, 5);
    }

    #[test]
    fn a_length_mismatch_is_passed_over() {
        let (recs, errs) = all(b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n@r3\nAC\n+\nII\n");
        assert_eq!(ids(&recs), ["r1", "r3"]);
        assert_eq!(errs, ["t: Sequence length is 4 but quality length is 3 (record 'r2' at line 5)"]);
    }

    #[test]
    fn unknown_extent_stops() {
        let mut r = reader(b"@r1\nACGT\n+\nIIII\nxyz\n@r3\nAC\n+\nII\n").unwrap();
        assert!(r.next_record().unwrap().is_ok());
        let e = r.next_record().unwrap().unwrap_err();
        assert!(!e.skippable && e.to_string().contains("line 5: expected '@'"), "{e}");
        assert!(r.next_record().is_none());
        let e = reader(b"@r1\nACGT\nAC\n+\nIIII\n").err().unwrap().to_string();
        assert!(e.contains("t: Expected '+' separator but found 'A' on line 3 (record 'r1' at line 1;"), "{e}");
    }

    #[test]
    fn a_record_cut_by_the_end_is_passed_over() {
        let (recs, errs) = all(b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n");
        assert_eq!(ids(&recs), ["r1"]);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("record 'r2' at line 5: the input ends inside the record"), "{errs:?}");
    }

    #[test]
    fn first_record_is_read_at_open() {
        let r = reader(b">a\nAC\n").unwrap();
        assert_eq!(r.format(), Format::Fasta);
        assert_eq!(r.peek().unwrap().as_ref().unwrap().id, "a");
        let r = reader(b"\n\r\n").unwrap();
        assert_eq!(r.format(), Format::Empty);
        assert!(r.peek().is_none());
        let e = reader(b"hello\n").err().unwrap().to_string();
        assert_eq!(e, "t: not FASTA or FASTQ: Expected '@' or '>' at the start of the file but found 'h'");
        // a first record with a known extent is an error of that record, not of the file
        let r = reader(b"@a\nAC\n+\nI\n").unwrap();
        assert!(r.peek().unwrap().as_ref().unwrap_err().skippable);
    }

    #[test]
    fn alignments_point_to_samtools() {
        let e = reader(b"@HD\tVN:1.6\n@SQ\tSN:c\tLN:5\n").err().unwrap().to_string();
        assert!(e.contains("a SAM file") && e.contains("samtools fastq"), "{e}");
        let e = reader(b"CRAM\x03\x00").err().unwrap().to_string();
        assert!(e.contains("a CRAM file"), "{e}");
    }

    #[test]
    fn memory_is_bounded_by_the_record() {
        // 1-base lines, blank lines and CRLF lines: the buffers stay at one record and the read buffer
        let mut text = b">a\n".to_vec();
        for _ in 0..200_000 {
            text.extend_from_slice(b"A\n\n\r\n");
        }
        text.extend_from_slice(b">b\nC\n");
        let mut r = reader(&text).unwrap();
        let a = r.next_record().unwrap().unwrap();
        assert_eq!(a.seq.len(), 200_000);
        assert!(a.seq.capacity() <= 2 * a.seq.len(), "{}", a.seq.capacity());
        assert_eq!(r.next_record().unwrap().unwrap().line, 600_002);
        assert!(r.header.capacity() < 64);
        assert_eq!(r.input.buf.len(), BUFFER);
    }
}
