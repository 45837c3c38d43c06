//! BED lines, for both readers of BED: `train --bed` (labelled intervals, heads::labels) and
//! `--regions` (spans of an indexed FASTA, io::regions). Each checks the coordinates against
//! its own needs; the line syntax and its error messages are shared.
//!
//! Parsed here, not with noodles-bed 0.40: its reader panics on some malformed lines (found by
//! fuzzing: fuzz/artifacts kept as the `bed_line_that_crashed_noodles` tests).

use anyhow::{bail, Result};

/// One data line: 0-based, half-open coordinates (not yet checked against each other) and all
/// its tab-separated columns, the first three included.
#[derive(Debug)]
pub struct BedLine<'a> {
    pub chrom: &'a str,
    pub start: usize,
    pub end: usize,
    pub columns: Vec<&'a str>,
}

/// Line `n` (1-based) of `name`, both for messages; None for blank, `#`, `track` and `browser`
/// lines. Trailing white space (a CRLF file's `\r` too) is not part of the last column.
pub fn parse_line<'a>(line: &'a str, n: usize, name: &str) -> Result<Option<BedLine<'a>>> {
    let t = line.trim_end();
    if t.is_empty() || t.starts_with('#') || t.starts_with("track") || t.starts_with("browser") {
        return Ok(None);
    }
    let columns: Vec<&str> = t.split('\t').collect();
    let num = |s: &str| s.trim_end_matches('\r').parse::<usize>().ok();
    let (chrom, start, end) = match columns.as_slice() {
        [c, s, e, ..] if !c.is_empty() => match (num(s), num(e)) {
            (Some(s), Some(e)) => (*c, s, e),
            _ => bail!("{name}: line {n}: not a BED line (start and end must be integers)"),
        },
        _ => bail!("{name}: line {n}: not a BED line (needs chrom, start and end separated by tabs)"),
    };
    Ok(Some(BedLine { chrom, start, end, columns }))
}
