//! FASTA/FASTQ records from a file or `-` (stdin), compression sniffed from the bytes
//! (needletail: gz/bgzf, bz2, xz, zstd), with positions for error messages.

use anyhow::{anyhow, Result};
use needletail::errors::ParseErrorKind;
use needletail::parser::FastxReader;

/// One owned record. `id` is the header up to the first whitespace (samtools convention).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub seq: Vec<u8>,
    /// 1-based line of the header, for messages.
    pub line: u64,
}

pub struct Reader {
    inner: Option<Box<dyn FastxReader>>,
    name: String,
    records: usize,
}

impl Reader {
    /// `-` reads stdin. An empty input is a reader with no records, not an error.
    pub fn open(path: &str) -> Result<Self> {
        let name = if path == "-" { "<stdin>".to_string() } else { path.to_string() };
        let opened = if path == "-" {
            needletail::parse_fastx_stdin()
        } else {
            if std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false) {
                return Err(anyhow!("{name}: is a directory, not a FASTA/FASTQ file"));
            }
            needletail::parse_fastx_file(path)
        };
        let inner = match opened {
            Ok(r) => Some(r),
            Err(e) if e.kind == ParseErrorKind::EmptyFile => None,
            Err(e) if e.kind == ParseErrorKind::Io => {
                let io = std::fs::File::open(path).err().map(|e| e.to_string()).unwrap_or(e.msg);
                return Err(anyhow!("{name}: {io}"));
            }
            Err(e) => return Err(anyhow!("{name}: not FASTA or FASTQ: {e}")),
        };
        Ok(Reader { inner, name, records: 0 })
    }

    /// Records from any byte stream (compression sniffed as for files); `name` is for messages.
    pub fn from_read(name: &str, read: impl std::io::Read + Send + 'static) -> Result<Self> {
        let inner = match needletail::parse_fastx_reader(read) {
            Ok(r) => Some(r),
            Err(e) if e.kind == ParseErrorKind::EmptyFile => None,
            Err(e) => return Err(anyhow!("{name}: not FASTA or FASTQ: {e}")),
        };
        Ok(Reader { inner, name: name.to_string(), records: 0 })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next record, or an error naming the file and the record or line.
    pub fn next_record(&mut self) -> Option<Result<Record>> {
        let inner = self.inner.as_mut()?;
        let rec = match inner.next()? {
            Ok(r) => r,
            Err(e) => {
                let what = match e.kind {
                    ParseErrorKind::Io => format!("record {}: read failed (truncated or corrupt input?): {}", self.records + 1, e.msg),
                    _ => e.to_string(),
                };
                self.inner = None;
                return Some(Err(anyhow!("{}: {what}", self.name)));
            }
        };
        self.records += 1;
        let id_bytes = rec.id();
        let end = id_bytes.iter().position(|b| b.is_ascii_whitespace()).unwrap_or(id_bytes.len());
        let id = String::from_utf8_lossy(&id_bytes[..end]).into_owned();
        let line = rec.start_line_number();
        Some(Ok(Record { id, seq: rec.seq().into_owned(), line }))
    }
}
