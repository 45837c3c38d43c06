//! CSV rows with shortest round-trip float text (the csv crate's quoting for text fields).
//!
//! Rows are formatted into a block of bytes that goes to the destination whole. The header
//! waits in that block until the first row (or `into_inner` on an empty input), so an input
//! that fails before its first record leaves the destination untouched.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::Result;

use super::{non_finite, Pace};

pub struct Csv<W: Write> {
    /// `None` only after `into_inner`.
    out: Option<W>,
    fmt: csv::Writer<Vec<u8>>,
    num: ryu::Buffer,
    int: String,
    /// Whether a row (not only the header) has been formatted.
    rows: bool,
    pace: Pace,
}

/// Bytes of formatted rows collected before they are written out.
const BLOCK: usize = 1 << 16;

fn formatter() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new().flexible(false).from_writer(Vec::with_capacity(BLOCK))
}

/// Fields of one row, in order, into a formatter.
struct Fields<'a> {
    w: &'a mut csv::Writer<Vec<u8>>,
    num: &'a mut ryu::Buffer,
    int: &'a mut String,
}

impl Fields<'_> {
    fn text(&mut self, s: &str) -> Result<()> {
        Ok(self.w.write_field(s)?)
    }
    fn int(&mut self, i: usize) -> Result<()> {
        self.int.clear();
        write!(self.int, "{i}").expect("writing to a String");
        Ok(self.w.write_field(&*self.int)?)
    }
    fn floats(&mut self, vals: impl IntoIterator<Item = f32>) -> Result<()> {
        for v in vals {
            if !v.is_finite() {
                return Err(non_finite());
            }
            self.w.write_field(self.num.format_finite(v))?;
        }
        Ok(())
    }
    fn end(&mut self) -> Result<()> {
        Ok(self.w.write_record(None::<&[u8]>)?)
    }
}

/// One row of text fields, integer fields, then the values.
fn format_row(f: &mut Fields, id: &str, ints: &[usize], vals: impl IntoIterator<Item = f32>) -> Result<()> {
    f.text(id)?;
    for &i in ints {
        f.int(i)?;
    }
    f.floats(vals)?;
    f.end()
}

/// The bytes a formatter holds, leaving it empty.
fn take_bytes(w: &mut csv::Writer<Vec<u8>>) -> Result<Vec<u8>> {
    std::mem::replace(w, formatter()).into_inner().map_err(|e| anyhow::Error::new(e.into_error()))
}

/// A row being built field by field (`Csv::start_row`), for rows whose shape is not
/// `id, ints, values` (several heads' labels and probabilities).
pub struct Row<'a, W: Write> {
    csv: &'a mut Csv<W>,
}

impl<W: Write> Row<'_, W> {
    pub fn text(&mut self, s: &str) -> Result<&mut Self> {
        self.csv.fields().text(s)?;
        Ok(self)
    }
    pub fn int(&mut self, i: usize) -> Result<&mut Self> {
        self.csv.fields().int(i)?;
        Ok(self)
    }
    pub fn floats(&mut self, vals: impl IntoIterator<Item = f32>) -> Result<&mut Self> {
        self.csv.fields().floats(vals)?;
        Ok(self)
    }
    pub fn end(&mut self) -> Result<()> {
        self.csv.fields().end()?;
        self.csv.row_done()
    }
}

impl<W: Write> Csv<W> {
    pub fn new(inner: W) -> Self {
        Csv { out: Some(inner), fmt: formatter(), num: ryu::Buffer::new(), int: String::new(), rows: false, pace: Pace::new() }
    }

    fn fields(&mut self) -> Fields<'_> {
        Fields { w: &mut self.fmt, num: &mut self.num, int: &mut self.int }
    }

    pub fn header(&mut self, lead: &[&str], cols: &[String]) -> Result<()> {
        for f in lead {
            self.fmt.write_field(f)?;
        }
        for c in cols {
            self.fmt.write_field(c)?;
        }
        self.fmt.write_record(None::<&[u8]>)?;
        Ok(())
    }

    /// One row: leading text field, integer fields, then the values.
    pub fn row(&mut self, id: &str, ints: &[usize], vals: impl IntoIterator<Item = f32>) -> Result<()> {
        format_row(&mut self.fields(), id, ints, vals)?;
        self.row_done()
    }

    pub fn start_row(&mut self) -> Row<'_, W> {
        Row { csv: self }
    }

    fn row_done(&mut self) -> Result<()> {
        self.rows = true;
        if self.fmt.get_ref().len() >= BLOCK {
            self.write_block()?;
        }
        if self.pace.due() {
            self.push()?;
        }
        Ok(())
    }

    /// Many rows (id, length, values), formatted on the rayon pool and written in order:
    /// for batches of short reads, where formatting would otherwise hold up the device.
    pub fn rows<'a>(&mut self, rows: &[(&'a str, usize, &'a [f32])]) -> Result<()> {
        use rayon::prelude::*;
        const PER_TASK: usize = 256;
        let blocks: Vec<Vec<u8>> = rows
            .par_chunks(PER_TASK)
            .map(|chunk| -> Result<Vec<u8>> {
                let (mut w, mut num, mut int) = (formatter(), ryu::Buffer::new(), String::new());
                let mut f = Fields { w: &mut w, num: &mut num, int: &mut int };
                for (id, len, vals) in chunk {
                    format_row(&mut f, id, &[*len], vals.iter().copied()).map_err(|e| e.context(format!("record '{id}'")))?;
                }
                take_bytes(&mut w)
            })
            .collect::<Result<_>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        self.rows = true;
        self.write_block()?;
        let out = self.out.as_mut().expect("present until into_inner");
        for b in blocks {
            out.write_all(&b)?;
        }
        if self.pace.due() {
            self.push()?;
        }
        Ok(())
    }

    fn write_block(&mut self) -> Result<()> {
        let bytes = take_bytes(&mut self.fmt)?;
        self.out.as_mut().expect("present until into_inner").write_all(&bytes)?;
        Ok(())
    }

    /// Everything formatted so far to the destination, and the destination flushed.
    fn push(&mut self) -> Result<()> {
        self.write_block()?;
        self.out.as_mut().expect("present until into_inner").flush()?;
        Ok(())
    }

    pub fn into_inner(mut self) -> Result<W> {
        self.write_block()?;
        Ok(self.out.take().expect("present until into_inner"))
    }
}

impl<W: Write> Drop for Csv<W> {
    /// Rows formatted before an error still reach the output (stdout keeps what was done);
    /// a header alone does not.
    fn drop(&mut self) {
        if self.out.is_some() && self.rows {
            let _ = self.write_block();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Csv;

    /// `rows` (formatted on several threads, in blocks) writes exactly what `row` does one
    /// row at a time, in order, quoting included.
    #[test]
    fn batch_rows_equal_single_rows() {
        let ids: Vec<String> = (0..1000).map(|i| if i % 7 == 0 { format!("read,{i} \"q\"") } else { format!("r{i}") }).collect();
        let vals: Vec<Vec<f32>> = (0..1000).map(|i| (0..5).map(|j| (i * 5 + j) as f32 / 7.0 - 300.0).collect()).collect();
        let cols: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let mut one = Csv::new(Vec::new());
        one.header(&["id", "length"], &cols).unwrap();
        for (k, (id, v)) in ids.iter().zip(&vals).enumerate() {
            one.row(id, &[k], v.iter().copied()).unwrap();
        }
        let mut batch = Csv::new(Vec::new());
        batch.header(&["id", "length"], &cols).unwrap();
        let rows: Vec<(&str, usize, &[f32])> = ids.iter().zip(&vals).enumerate().map(|(k, (id, v))| (id.as_str(), k, v.as_slice())).collect();
        batch.rows(&rows[..400]).unwrap();
        batch.start_row().text(rows[400].0).unwrap().int(400).unwrap().floats(rows[400].2.iter().copied()).unwrap().end().unwrap();
        batch.rows(&rows[401..]).unwrap();
        let (a, b) = (one.into_inner().unwrap(), batch.into_inner().unwrap());
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
    }

    #[test]
    fn non_finite_values_are_errors() {
        let mut c = Csv::new(Vec::new());
        assert!(c.row("a", &[1], [1.0, f32::NAN]).is_err());
        assert!(c.rows(&[("b", 1, &[f32::INFINITY][..])]).unwrap_err().to_string().contains("record 'b'"));
    }

    /// The header waits for the first row: dropped after an error before any record, a CSV
    /// writes nothing; an empty input still gets its header through `into_inner`.
    #[test]
    fn header_waits_for_a_row() {
        let mut sink = Vec::new();
        {
            let mut c = Csv::new(&mut sink);
            c.header(&["id"], &[]).unwrap();
        }
        assert!(sink.is_empty());
        let mut c = Csv::new(&mut sink);
        c.header(&["id"], &[]).unwrap();
        c.into_inner().unwrap();
        assert_eq!(sink, b"id\n");
    }
}
