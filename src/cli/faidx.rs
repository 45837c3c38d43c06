//! `dna-mamba faidx`: write the .fai index that regions and variant scoring read, with the
//! rules of samtools faidx: every line of a sequence but its last has the same length,
//! blank lines may end a sequence (or the file) but not sit inside one.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct FaidxArgs {
    /// Uncompressed FASTA (for bgzf .gz use `samtools faidx`, which also writes the .gzi).
    pub fasta: PathBuf,
}

/// One .fai row: name, length, offset of the first base, bases per line, bytes per line.
#[derive(Debug, PartialEq, Eq)]
pub struct FaiRow {
    pub name: String,
    pub length: u64,
    pub offset: u64,
    pub line_bases: u64,
    pub line_width: u64,
}

/// Index a FASTA read from `input`; `name` is for messages, which name the record and line.
pub fn index(input: impl BufRead, name: &str) -> Result<Vec<FaiRow>> {
    let mut input = input;
    let mut rows: Vec<FaiRow> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    let mut buf = Vec::new();
    let (mut pos, mut n) = (0u64, 0usize);
    // the current record: its row, whether a short (last) line or a blank line was seen
    let mut ended_short = false;
    let mut blank_after = false;
    let mut header_line = 0;
    loop {
        buf.clear();
        let got = input.read_until(b'\n', &mut buf).with_context(|| format!("{name}: line {}", n + 1))? as u64;
        if got == 0 {
            break;
        }
        n += 1;
        pos += got;
        if n == 1 && buf.starts_with(&[0x1f, 0x8b]) {
            bail!("{name}: compressed; unpack it, or index bgzf with `samtools faidx` (which also writes the .gzi)");
        }
        let has_nl = buf.ends_with(b"\n");
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(h) = line.strip_prefix(b">") {
            let id = String::from_utf8_lossy(h.split(|b| b.is_ascii_whitespace()).next().unwrap_or(b"")).into_owned();
            if id.is_empty() {
                bail!("{name}: line {n}: header with no name");
            }
            if let Some(first) = seen.insert(id.clone(), n) {
                bail!("{name}: line {n}: sequence '{id}' again (first on line {first})");
            }
            rows.push(FaiRow { name: id, length: 0, offset: pos, line_bases: 0, line_width: 0 });
            (ended_short, blank_after, header_line) = (false, false, n);
            continue;
        }
        let Some(row) = rows.last_mut() else {
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            bail!("{name}: line {n}: text before the first '>' header (not FASTA?)");
        };
        if line.is_empty() {
            blank_after = true;
            continue;
        }
        let id = &row.name;
        if blank_after {
            bail!("{name}: line {n}: sequence '{id}' (header on line {header_line}) goes on after a blank line");
        }
        let (bases, width) = (line.len() as u64, got);
        if row.line_bases == 0 {
            (row.line_bases, row.line_width) = (bases, width);
        } else if ended_short || bases > row.line_bases || (bases == row.line_bases && has_nl && width != row.line_width) {
            bail!(
                "{name}: line {n}: sequence '{id}' (header on line {header_line}) has lines of different lengths ({} bases per line before); rewrap it, e.g. `seqkit seq -w 60`",
                row.line_bases
            );
        }
        ended_short |= bases < row.line_bases;
        row.length += bases;
    }
    if rows.is_empty() {
        bail!("{name}: no '>' header: not FASTA");
    }
    Ok(rows)
}

pub fn run(a: FaidxArgs) -> Result<()> {
    let name = a.fasta.display().to_string();
    let file = std::fs::File::open(&a.fasta).with_context(|| name.clone())?;
    let rows = index(std::io::BufReader::new(file), &name)?;
    let mut fai = a.fasta.clone().into_os_string();
    fai.push(".fai");
    let fai = PathBuf::from(fai);
    let mut f = crate::output::AtomicFile::create(&fai)?;
    for r in &rows {
        writeln!(f, "{}\t{}\t{}\t{}\t{}", r.name, r.length, r.offset, r.line_bases, r.line_width).with_context(|| fai.display().to_string())?;
    }
    f.commit()
}
