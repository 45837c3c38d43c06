//! Reducers of a record's feature rows, as `Sink`s of the embedder: means over the record or
//! equal segments of it (`ReadPool`), means over windows written as they close (`Windows`),
//! and the centred per-position window of position-level heads (`Centered`), which holds one
//! window of rows, never a record.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Result};

use crate::embed::Sink;
use crate::heads::Pooling;
use crate::output::csv::Csv;

/// The mean of all rows (one segment), or the means of `n` equal segments concatenated
/// (`--pool bins:N`). Linear: the strand passes arrive as weighted partial sums, or as sums
/// over each segment's positions taken on the device.
pub struct ReadPool {
    len: usize,
    bins: usize,
    width: usize,
    sum: Vec<f64>,
    /// Segments of the ranges of the last `ranges` call.
    asked: Vec<usize>,
}

impl ReadPool {
    pub fn new(pooling: Pooling, len: usize, width: usize) -> Self {
        let bins = match pooling {
            Pooling::Bins(n) => n,
            _ => 1,
        };
        ReadPool { len, bins, width, sum: vec![0.0; bins * width], asked: Vec::new() }
    }

    /// The mean over a record's `len` positions.
    pub fn mean(len: usize, width: usize) -> Self {
        Self::new(Pooling::Mean, len, width)
    }

    /// The mean of a record of `len` positions whose rows sum to `sum` (summed elsewhere: a
    /// packed batch sums each record on the device).
    pub fn mean_of(sum: &[f64], len: usize) -> Vec<f32> {
        sum.iter().map(|s| (s / len.max(1) as f64) as f32).collect()
    }

    pub fn dim(pooling: Pooling, width: usize) -> usize {
        match pooling {
            Pooling::Bins(n) => n * width,
            _ => width,
        }
    }

    fn bin(&self, pos: usize) -> usize {
        pos * self.bins / self.len.max(1)
    }

    /// The positions of each segment (`bin(p) == b` exactly for `p` in range `b`; empty
    /// where a record is shorter than the number of segments).
    pub fn bin_ranges(&self) -> Vec<(usize, usize)> {
        let first = |b: usize| (b * self.len).div_ceil(self.bins);
        (0..self.bins).map(|b| (first(b), first(b + 1))).collect()
    }

    /// Adds a sum of rows over segment `b`'s positions.
    pub fn add_bin_sum(&mut self, b: usize, sum: &[f64]) {
        self.sum[b * self.width..(b + 1) * self.width].iter_mut().zip(sum).for_each(|(s, v)| *s += v);
    }

    /// The feature vector (a segment with no positions, in a record shorter than the number
    /// of segments, takes the record's mean).
    pub fn finish(&self, out: &mut Vec<f32>) {
        debug_assert!(self.bin_ranges().iter().enumerate().all(|(b, &(s, e))| (s..e).all(|p| self.bin(p) == b)));
        let w = self.width;
        let count: Vec<usize> = self.bin_ranges().iter().map(|(s, e)| e - s).collect();
        let mut total = vec![0f64; w];
        for b in 0..self.bins {
            total.iter_mut().zip(&self.sum[b * w..(b + 1) * w]).for_each(|(t, s)| *t += s);
        }
        out.clear();
        for (b, &n) in count.iter().enumerate() {
            if n > 0 {
                out.extend(self.sum[b * w..(b + 1) * w].iter().map(|s| (s / n as f64) as f32));
            } else {
                out.extend(total.iter().map(|s| (s / self.len.max(1) as f64) as f32));
            }
        }
    }

    /// The feature vector, as a new vector.
    pub fn features(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.bins * self.width);
        self.finish(&mut out);
        out
    }
}

impl Sink for ReadPool {
    fn linear(&self) -> bool {
        true
    }
    fn ranges(&mut self, lo: usize, hi: usize) -> Option<Vec<(usize, usize)>> {
        self.asked.clear();
        let mut out = Vec::new();
        for (b, (s, e)) in self.bin_ranges().into_iter().enumerate() {
            let (s, e) = (s.max(lo), e.min(hi));
            if s < e {
                self.asked.push(b);
                out.push((s, e));
            }
        }
        Some(out)
    }
    fn add_sum(&mut self, k: usize, sum: &[f64], weight: f64) -> Result<()> {
        let b = self.asked[k];
        self.sum[b * self.width..(b + 1) * self.width].iter_mut().zip(sum).for_each(|(s, v)| *s += weight * v);
        Ok(())
    }
    fn add(&mut self, pos: usize, row: &[f32], weight: f32) -> Result<()> {
        let b = self.bin(pos);
        for (s, v) in self.sum[b * self.width..(b + 1) * self.width].iter_mut().zip(row) {
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

/// Position level: for each position in order, the mean of the rows in the window of `w`
/// bases centred on it (clipped at the record's ends), handed to `emit`. Rows must arrive
/// finished and in order (a non-linear sink); output lags input by `w / 2` positions.
pub struct Centered<'a> {
    len: usize,
    w: usize,
    width: usize,
    ring: Vec<f32>,
    sum: Vec<f64>,
    /// Lowest row inside `sum`.
    lo: usize,
    next: usize,
    out: Vec<f32>,
    emit: &'a mut dyn FnMut(usize, &[f32]) -> Result<()>,
}

impl<'a> Centered<'a> {
    pub fn new(w: usize, len: usize, width: usize, emit: &'a mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Self {
        assert!(w % 2 == 1, "centred windows are odd");
        Centered { len, w, width, ring: vec![0.0; w * width], sum: vec![0.0; width], lo: 0, next: 0, out: vec![0.0; width], emit }
    }

    fn slot(&self, p: usize) -> std::ops::Range<usize> {
        let s = p % self.w;
        s * self.width..(s + 1) * self.width
    }

    fn drop_row(&mut self, p: usize) {
        let r = self.slot(p);
        for (s, v) in self.sum.iter_mut().zip(&self.ring[r]) {
            *s -= *v as f64;
        }
    }

    fn emit_at(&mut self, q: usize, hi: usize) -> Result<()> {
        let n = (hi - self.lo + 1) as f64;
        for (o, s) in self.out.iter_mut().zip(&self.sum) {
            *o = (*s / n) as f32;
        }
        (self.emit)(q, &self.out)
    }

    /// Whether every position has been emitted.
    pub fn done(&self) -> bool {
        self.next == self.len
    }
}

impl Sink for Centered<'_> {
    fn linear(&self) -> bool {
        false
    }
    fn add(&mut self, pos: usize, row: &[f32], _weight: f32) -> Result<()> {
        if pos != self.next {
            bail!("internal: rows out of order ({pos} after {})", self.next);
        }
        self.next += 1;
        let h = self.w / 2;
        if pos >= self.w {
            self.drop_row(pos - self.w);
            self.lo = pos - self.w + 1;
        }
        let r = self.slot(pos);
        self.ring[r.clone()].copy_from_slice(row);
        for (s, v) in self.sum.iter_mut().zip(row) {
            *s += *v as f64;
        }
        if pos >= h {
            self.emit_at(pos - h, pos)?;
        }
        if pos + 1 == self.len {
            // the last h positions: their windows only lose rows on the left
            let first = if pos >= h { pos - h + 1 } else { 0 };
            for q in first..self.len {
                while self.lo + h < q {
                    let lo = self.lo;
                    self.drop_row(lo);
                    self.lo += 1;
                }
                self.emit_at(q, pos)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centred_means_match_direct() {
        let width = 2;
        for len in [1usize, 2, 3, 5, 10] {
            for w in [1usize, 3, 5, 7, 21] {
                let rows: Vec<f32> = (0..len * width).map(|i| (i * i % 7) as f32 - 2.0).collect();
                let mut got: Vec<(usize, Vec<f32>)> = Vec::new();
                let mut emit = |p: usize, f: &[f32]| {
                    got.push((p, f.to_vec()));
                    Ok(())
                };
                let mut c = Centered::new(w, len, width, &mut emit);
                for p in 0..len {
                    c.add(p, &rows[p * width..(p + 1) * width], 1.0).unwrap();
                }
                assert!(c.done());
                drop(c);
                assert_eq!(got.len(), len, "len {len} w {w}");
                for (q, f) in &got {
                    let lo = q.saturating_sub(w / 2);
                    let hi = (q + w / 2).min(len - 1);
                    for j in 0..width {
                        let want: f32 = (lo..=hi).map(|p| rows[p * width + j]).sum::<f32>() / (hi - lo + 1) as f32;
                        assert!((f[j] - want).abs() < 1e-5, "len {len} w {w} q {q}: {} vs {want}", f[j]);
                    }
                }
                assert!(got.iter().enumerate().all(|(i, (q, _))| i == *q));
            }
        }
    }

    #[test]
    fn segment_means() {
        let mut p = ReadPool::new(Pooling::Bins(2), 5, 1);
        for (i, v) in [1.0, 3.0, 5.0, 7.0, 9.0].iter().enumerate() {
            // two half-weight passes, as a two-strand run delivers them
            p.add(i, &[*v], 0.5).unwrap();
            p.add(i, &[*v], 0.5).unwrap();
        }
        let mut out = Vec::new();
        p.finish(&mut out);
        // positions 0,1,2 -> bin 0 (p*2/5 = 0,0,0), 3,4 -> bin 1
        assert_eq!(out, [3.0, 8.0]);
        let mut short = ReadPool::new(Pooling::Bins(3), 1, 1);
        short.add(0, &[4.0], 1.0).unwrap();
        short.finish(&mut out);
        assert_eq!(out, [4.0, 4.0, 4.0]);
    }
}
