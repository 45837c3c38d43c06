//! Where training labels come from: an `id,label` table or a `label=` field in record headers
//! (read level), and BED or GFF3 intervals painted onto a genome (position level; parsed with
//! noodles).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// Labels of records by id, with the line each came from (for messages).
#[derive(Debug)]
pub struct LabelTable {
    pub name: String,
    pub rows: HashMap<String, (String, usize)>,
}

/// Read a whole file, gunzipping when it starts with the gzip magic.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut out).with_context(|| format!("{}: bad gzip data", path.display()))?;
        out
    } else {
        bytes
    };
    String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))
}

impl LabelTable {
    /// `id,label` rows (comma or tab separated; a first row `id,label` is a header; blank lines
    /// and lines starting with `#` are skipped).
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, name: &str) -> Result<Self> {
        let mut rows: HashMap<String, (String, usize)> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let sep = if line.contains('\t') { '\t' } else { ',' };
            let f: Vec<&str> = line.split(sep).map(str::trim).collect();
            if f.len() < 2 || f[0].is_empty() || f[1].is_empty() {
                bail!("{name}: line {n}: expected id{sep}label", sep = if sep == '\t' { "<TAB>" } else { "," });
            }
            if n == 1 && f[0].eq_ignore_ascii_case("id") && f[1].eq_ignore_ascii_case("label") {
                continue;
            }
            if let Some((old, line0)) = rows.get(f[0]) {
                if old != f[1] {
                    bail!("{name}: line {n}: id '{}' has label '{}' here and '{old}' on line {line0}", f[0], f[1]);
                }
                continue;
            }
            rows.insert(f[0].to_string(), (f[1].to_string(), n));
        }
        Ok(LabelTable { name: name.to_string(), rows })
    }
}

/// The value of a `label=VALUE` field in a header's description (fields split by whitespace,
/// `;` or `|`).
pub fn header_label(description: &str) -> Option<&str> {
    description
        .split(|c: char| c.is_whitespace() || c == ';' || c == '|')
        .find_map(|f| f.strip_prefix("label="))
        .filter(|v| !v.is_empty())
}

/// One labelled interval, 0-based half-open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    pub chrom: String,
    pub start: usize,
    pub end: usize,
    pub label: String,
}

/// BED3+ intervals. The label is `rename`, else the name column; `track`/`browser`/`#` lines
/// and blank lines are skipped.
pub fn read_bed(path: &Path, rename: Option<&str>) -> Result<Vec<Interval>> {
    parse_bed(&read_text(path)?, &path.display().to_string(), rename)
}

/// `read_bed` over text; `name` is for messages.
pub fn parse_bed(text: &str, name: &str, rename: Option<&str>) -> Result<Vec<Interval>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some(bed) = crate::io::bed::parse_line(line, n, name)? else { continue };
        let (start, end) = (bed.start, bed.end);
        if end < start {
            bail!("{name}: line {n}: end {end} is before start {start}");
        }
        let label = match rename {
            Some(l) => l.to_string(),
            None => match bed.columns.get(3) {
                Some(v) if !v.is_empty() && *v != "." => v.to_string(),
                _ => bail!("{name}: line {n}: no name column to take the label from (BED3: give --label NAME)"),
            },
        };
        // an empty interval (an insertion point) paints nothing
        if end > start {
            out.push(Interval { chrom: bed.chrom.to_string(), start, end, label });
        }
    }
    Ok(out)
}

/// GFF3 features whose type is one of `types` (all types when empty). The label is `rename`,
/// else the type.
pub fn read_gff(path: &Path, types: &[String], rename: Option<&str>) -> Result<Vec<Interval>> {
    parse_gff(&read_text(path)?, &path.display().to_string(), types, rename)
}

/// `read_gff` over text; `name` is for messages.
pub fn parse_gff(text: &str, name: &str, types: &[String], rename: Option<&str>) -> Result<Vec<Interval>> {
    use noodles::gff;
    // blank lines are dropped before noodles sees them: count lines in the original text
    let kept: Vec<(usize, &str)> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l.trim_end_matches('\r'))).collect();
    let joined: String = kept.iter().flat_map(|(_, l)| [*l, "\n"]).collect();
    let mut reader = gff::io::Reader::new(joined.as_bytes());
    let mut line = gff::Line::default();
    let mut out = Vec::new();
    for &(n, _) in &kept {
        if reader.read_line(&mut line).with_context(|| format!("{name}: line {n}"))? == 0 {
            break;
        }
        if let Some(d) = line.as_directive() {
            if d.key() == "FASTA" {
                break;
            }
            continue;
        }
        let Some(rec) = line.as_record() else { continue };
        let rec = rec.with_context(|| format!("{name}: line {n}"))?;
        let ty = rec.ty().to_string();
        if !types.is_empty() && !types.contains(&ty) {
            continue;
        }
        let start = rec.start().with_context(|| format!("{name}: line {n}: bad start"))?.get() - 1;
        let end = rec.end().with_context(|| format!("{name}: line {n}: bad end"))?.get();
        if end <= start {
            bail!("{name}: line {n}: end {end} is before start {}", start + 1);
        }
        let label = rename.map(String::from).unwrap_or(ty);
        out.push(Interval { chrom: rec.reference_sequence_name().to_string(), start, end, label });
    }
    Ok(out)
}

/// Per-base label indices of one chromosome: `background` everywhere, then each interval
/// painted in file order (a later interval wins where they overlap).
pub fn paint(len: usize, intervals: &[&Interval], index: &HashMap<String, u8>, background: u8) -> Vec<u8> {
    let mut v = vec![background; len];
    for iv in intervals {
        let (s, e) = (iv.start.min(len), iv.end.min(len));
        v[s..e].iter_mut().for_each(|x| *x = index[&iv.label]);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_table() {
        let t = LabelTable::parse("id,label\nr1,a\n\n# c\nr2\tb\nr1,a\n", "t").unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows["r2"], ("b".to_string(), 5));
        let e = LabelTable::parse("r1,a\nr1,b\n", "t.csv").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("'r1'"), "{e}");
        assert!(LabelTable::parse("r1\n", "t").is_err());
    }

    #[test]
    fn header_labels() {
        assert_eq!(header_label("sample=3 label=viral"), Some("viral"));
        assert_eq!(header_label("x;label=a|b"), Some("a"));
        assert_eq!(header_label("nolabel here"), None);
        assert_eq!(header_label("label="), None);
    }

    #[test]
    fn bed_and_gff() {
        let dir = tempfile::tempdir().unwrap();
        let bed = dir.path().join("a.bed");
        std::fs::write(&bed, "track name=x\nchr1\t0\t10\tcds\t0\t+\n\nchr1\t20\t25\tcds\nchr2\t5\t6\n").unwrap();
        let e = read_bed(&bed, None).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("--label"), "{e}");
        let v = read_bed(&bed, Some("coding")).unwrap();
        assert_eq!(v[0], Interval { chrom: "chr1".into(), start: 0, end: 10, label: "coding".into() });
        assert_eq!((v[2].start, v[2].end), (5, 6));
        let gff = dir.path().join("a.gff3");
        std::fs::write(&gff, "##gff-version 3\n\nchrI\tSGD\tgene\t1\t10\t.\t+\t.\tID=g\nchrI\tSGD\tCDS\t3\t9\t.\t+\t0\tParent=g\n##FASTA\n>x\nACGT\n").unwrap();
        let v = read_gff(&gff, &["CDS".to_string()], None).unwrap();
        assert_eq!(v, [Interval { chrom: "chrI".into(), start: 2, end: 9, label: "CDS".into() }]);
        let idx = HashMap::from([("CDS".to_string(), 1u8)]);
        let refs: Vec<&Interval> = v.iter().collect();
        assert_eq!(paint(12, &refs, &idx, 0), [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    }

    /// The line that made noodles-bed 0.40 panic in io::regions: an error here too.
    #[test]
    fn bed_line_that_crashed_noodles() {
        assert!(parse_bed("chr1\tJ10\r\r\t\t\r\r\r9160\t6c", "t", None).is_err());
        let e = parse_bed("chr1\t5\t2\tx\n", "t", None).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("before start"), "{e}");
    }
}
