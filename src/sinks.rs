//! Per-record consumers of feature rows: pooled means, windows, and streamed per-position
//! rows (CSV, npy, safetensors). Nothing here holds a record's per-position output.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;

use crate::embed::Sink;

/// CSV writer over any output, with shortest round-trip float text.
pub struct Csv<W: Write> {
    /// `None` only after `into_inner`.
    out: Option<W>,
    /// Formats rows (the csv crate's quoting) into a block of bytes that goes to `out`
    /// whole; `rows` formats a batch the same way on several threads.
    fmt: csv::Writer<Vec<u8>>,
    num: ryu::Buffer,
}

/// Bytes of formatted rows collected before they are written out.
const BLOCK: usize = 1 << 16;

fn formatter() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new().flexible(false).from_writer(Vec::with_capacity(BLOCK))
}

/// One row of text fields, integer fields, then the values, into `w`.
fn format_row(w: &mut csv::Writer<Vec<u8>>, num: &mut ryu::Buffer, id: &str, ints: &[usize], vals: impl IntoIterator<Item = f32>) -> Result<()> {
    w.write_field(id)?;
    let mut ib = itoa_buf();
    for i in ints {
        ib.clear();
        use std::fmt::Write as _;
        write!(ib, "{i}").unwrap();
        w.write_field(&ib)?;
    }
    for v in vals {
        let s = if v.is_finite() { num.format_finite(v) } else { "nan" };
        w.write_field(s)?;
    }
    w.write_record(None::<&[u8]>)?;
    Ok(())
}

/// The bytes a formatter holds, leaving it empty.
fn take_bytes(w: &mut csv::Writer<Vec<u8>>) -> Result<Vec<u8>> {
    std::mem::replace(w, formatter()).into_inner().map_err(|e| anyhow::Error::new(e.into_error()))
}

impl<W: Write> Csv<W> {
    pub fn new(inner: W) -> Self {
        Csv { out: Some(inner), fmt: formatter(), num: ryu::Buffer::new() }
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

    /// One row: leading text fields, integer fields, then the values.
    pub fn row(&mut self, id: &str, ints: &[usize], vals: impl IntoIterator<Item = f32>) -> Result<()> {
        format_row(&mut self.fmt, &mut self.num, id, ints, vals)?;
        if self.fmt.get_ref().len() >= BLOCK {
            self.write_block()?;
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
                let (mut w, mut num) = (formatter(), ryu::Buffer::new());
                for (id, len, vals) in chunk {
                    format_row(&mut w, &mut num, id, &[*len], vals.iter().copied())?;
                }
                take_bytes(&mut w)
            })
            .collect::<Result<_>>()?;
        self.write_block()?;
        let out = self.out.as_mut().expect("present until into_inner");
        for b in blocks {
            out.write_all(&b)?;
        }
        Ok(())
    }

    fn write_block(&mut self) -> Result<()> {
        let bytes = take_bytes(&mut self.fmt)?;
        self.out.as_mut().expect("present until into_inner").write_all(&bytes)?;
        Ok(())
    }

    pub fn into_inner(mut self) -> Result<W> {
        self.write_block()?;
        Ok(self.out.take().expect("present until into_inner"))
    }
}

impl<W: Write> Drop for Csv<W> {
    /// Rows formatted before an error still reach the output (stdout keeps what was done).
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = self.write_block();
        }
    }
}

fn itoa_buf() -> String {
    String::with_capacity(20)
}

/// Mean over all positions (f64 sums: a chromosome has ~10^8 terms).
pub struct Mean {
    pub sum: Vec<f64>,
}

impl Mean {
    pub fn new(width: usize) -> Self {
        Mean { sum: vec![0.0; width] }
    }
    pub fn finish(&self, len: usize) -> impl Iterator<Item = f32> + '_ {
        self.sum.iter().map(move |s| (s / len as f64) as f32)
    }
}

impl Sink for Mean {
    fn linear(&self) -> bool {
        true
    }
    fn ranges(&mut self, lo: usize, hi: usize) -> Option<Vec<(usize, usize)>> {
        Some(vec![(lo, hi)])
    }
    fn add_sum(&mut self, _k: usize, sum: &[f64], weight: f64) -> Result<()> {
        self.sum.iter_mut().zip(sum).for_each(|(s, v)| *s += weight * v);
        Ok(())
    }
    fn add(&mut self, _pos: usize, row: &[f32], weight: f32) -> Result<()> {
        for (s, v) in self.sum.iter_mut().zip(row) {
            *s += (weight * v) as f64;
        }
        Ok(())
    }
}

/// Means over windows `[k·stride, k·stride + window)` clipped to the record; the last window
/// is the first to reach the record's end (so it may be partial, and its `end` says so).
pub struct Windows<'a, W: Write> {
    pub out: &'a mut Csv<W>,
    pub id: &'a str,
    /// Added to written coordinates (a region's start in its sequence).
    pub offset: usize,
    pub len: usize,
    pub window: usize,
    pub stride: usize,
    width: usize,
    open: BTreeMap<usize, Vec<f64>>,
    next_start: usize,
    done: bool,
    /// Window starts of the ranges of the last `ranges` call.
    asked: Vec<usize>,
}

impl<'a, W: Write> Windows<'a, W> {
    pub fn new(out: &'a mut Csv<W>, id: &'a str, len: usize, window: usize, stride: usize, width: usize, offset: usize) -> Self {
        Windows { out, id, offset, len, window, stride, width, open: BTreeMap::new(), next_start: 0, done: false, asked: Vec::new() }
    }

    /// Open every window that starts at or before `pos`.
    fn open_through(&mut self, pos: usize) {
        while !self.done && self.next_start <= pos {
            self.open.insert(self.next_start, vec![0.0; self.width]);
            self.done = self.end_of(self.next_start) >= self.len;
            self.next_start += self.stride;
        }
    }

    fn end_of(&self, start: usize) -> usize {
        (start + self.window).min(self.len)
    }
}

impl<W: Write> Sink for Windows<'_, W> {
    fn linear(&self) -> bool {
        true
    }
    fn ranges(&mut self, lo: usize, hi: usize) -> Option<Vec<(usize, usize)>> {
        if hi > lo {
            self.open_through(hi - 1);
        }
        self.asked.clear();
        let mut ranges = Vec::new();
        for &start in self.open.keys() {
            let (a, b) = (start.max(lo), self.end_of(start).min(hi));
            if a < b {
                self.asked.push(start);
                ranges.push((a, b));
            }
        }
        Some(ranges)
    }
    fn add_sum(&mut self, k: usize, sum: &[f64], weight: f64) -> Result<()> {
        let w = self.open.get_mut(&self.asked[k]).expect("asked windows stay open until flushed");
        w.iter_mut().zip(sum).for_each(|(s, v)| *s += weight * v);
        Ok(())
    }
    fn add(&mut self, pos: usize, row: &[f32], weight: f32) -> Result<()> {
        self.open_through(pos);
        let lo = (pos + 1).saturating_sub(self.window);
        for (_, sum) in self.open.range_mut(lo..=pos) {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += (weight * v) as f64;
            }
        }
        Ok(())
    }
    fn flush(&mut self, upto: usize) -> Result<()> {
        while let Some((&start, _)) = self.open.first_key_value() {
            let end = self.end_of(start);
            if end > upto {
                break;
            }
            let sum = self.open.remove(&start).unwrap();
            let n = (end - start) as f64;
            self.out.row(self.id, &[start + self.offset, end + self.offset], sum.iter().map(|s| (s / n) as f32))?;
        }
        Ok(())
    }
}

/// Per-position CSV rows `id,pos,values…`.
pub struct PositionCsv<'a, W: Write> {
    pub out: &'a mut Csv<W>,
    pub id: &'a str,
    /// Added to `pos` (a region's start in its sequence).
    pub offset: usize,
}

impl<W: Write> Sink for PositionCsv<'_, W> {
    fn linear(&self) -> bool {
        false
    }
    fn add(&mut self, pos: usize, row: &[f32], _weight: f32) -> Result<()> {
        self.out.row(self.id, &[pos + self.offset], row.iter().copied())
    }
}

/// Raw little-endian f32 rows (npy and safetensors bodies).
pub struct RawRows<'a, W: Write> {
    pub out: &'a mut W,
}

impl<W: Write> Sink for RawRows<'_, W> {
    fn linear(&self) -> bool {
        false
    }
    fn add(&mut self, _pos: usize, row: &[f32], _weight: f32) -> Result<()> {
        Ok(self.out.write_all(bytemuck::cast_slice(row))?)
    }
}

#[cfg(test)]
mod csv_tests {
    use super::Csv;

    /// `rows` (formatted on several threads, in blocks) writes exactly what `row` does one
    /// row at a time, in order, quoting included.
    #[test]
    fn batch_rows_equal_single_rows() {
        let ids: Vec<String> = (0..1000).map(|i| if i % 7 == 0 { format!("read,{i} \"q\"") } else { format!("r{i}") }).collect();
        let vals: Vec<Vec<f32>> = (0..1000).map(|i| (0..5).map(|j| (i * 5 + j) as f32 / 7.0 - 300.0).chain([f32::NAN]).collect()).collect();
        let mut one = Csv::new(Vec::new());
        one.header(&["id", "length"], &["a".into(), "b".into(), "c".into(), "d".into(), "e".into(), "f".into()]).unwrap();
        for (k, (id, v)) in ids.iter().zip(&vals).enumerate() {
            one.row(id, &[k], v.iter().copied()).unwrap();
        }
        let mut batch = Csv::new(Vec::new());
        batch.header(&["id", "length"], &["a".into(), "b".into(), "c".into(), "d".into(), "e".into(), "f".into()]).unwrap();
        let rows: Vec<(&str, usize, &[f32])> = ids.iter().zip(&vals).enumerate().map(|(k, (id, v))| (id.as_str(), k, v.as_slice())).collect();
        batch.rows(&rows[..400]).unwrap();
        batch.row(rows[400].0, &[400], rows[400].2.iter().copied()).unwrap();
        batch.rows(&rows[401..]).unwrap();
        let (a, b) = (one.into_inner().unwrap(), batch.into_inner().unwrap());
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
    }
}
