//! Per-base probabilities averaged over a centered window before they reach a BED or bedGraph
//! writer, so that a call reflects its neighbourhood rather than one base: position p gets the
//! mean over p - h ..= p + h (h = width / 2), clipped at the ends of a record (or of a stretch
//! of consecutive positions). Streamed: only the window is held, and output lags h bases.

use std::collections::VecDeque;

use anyhow::Result;

use super::bed::PositionWriter;

pub struct Smoothed<'a> {
    inner: &'a mut dyn PositionWriter,
    half: usize,
    /// The window's positions and probabilities, oldest first: at most 2h + 1.
    window: VecDeque<(usize, Vec<f32>)>,
    /// The next position to hand on.
    next: Option<usize>,
    mean: Vec<f32>,
    sums: Vec<f64>,
    /// Rows that left the window, reused for new ones.
    spare: Vec<Vec<f32>>,
}

impl<'a> Smoothed<'a> {
    /// `width` bases (1: the probabilities as they are; an even width acts as width + 1).
    pub fn new(inner: &'a mut dyn PositionWriter, width: usize) -> Self {
        Smoothed { inner, half: width / 2, window: VecDeque::new(), next: None, mean: Vec::new(), sums: Vec::new(), spare: Vec::new() }
    }

    /// Hand on position `p`: the mean over the held positions within h of it.
    fn emit(&mut self, p: usize) -> Result<()> {
        let lo = p.saturating_sub(self.half);
        let hi = p + self.half;
        let width = self.window.front().map_or(0, |(_, v)| v.len());
        self.sums.clear();
        self.sums.resize(width, 0.0);
        let mut n = 0usize;
        for (_, v) in self.window.iter().filter(|(q, _)| (lo..=hi).contains(q)) {
            self.sums.iter_mut().zip(v).for_each(|(s, x)| *s += *x as f64);
            n += 1;
        }
        self.mean.clear();
        self.mean.extend(self.sums.iter().map(|s| (s / n as f64) as f32));
        self.inner.push(p, &self.mean)?;
        self.next = Some(p + 1);
        // the oldest position is no longer in any later window
        while self.window.front().is_some_and(|(q, _)| q + self.half < p + 1) {
            if let Some((_, v)) = self.window.pop_front() {
                self.spare.push(v);
            }
        }
        Ok(())
    }

    /// Hand on every held position (the end of a record or of a stretch).
    fn drain(&mut self) -> Result<()> {
        while let (Some(p), Some(&(last, _))) = (self.next, self.window.back()) {
            if p > last {
                break;
            }
            self.emit(p)?;
        }
        self.spare.extend(self.window.drain(..).map(|(_, v)| v));
        self.next = None;
        Ok(())
    }
}

impl PositionWriter for Smoothed<'_> {
    fn start(&mut self, chrom: &str) -> Result<()> {
        self.inner.start(chrom)
    }

    fn push(&mut self, pos: usize, probs: &[f32]) -> Result<()> {
        if self.half == 0 {
            return self.inner.push(pos, probs);
        }
        if self.window.back().is_some_and(|&(last, _)| pos != last + 1) {
            // not the next base: the stretch before ends here
            self.drain()?;
        }
        if self.next.is_none() {
            self.next = Some(pos);
        }
        let mut row = self.spare.pop().unwrap_or_default();
        row.clear();
        row.extend_from_slice(probs);
        self.window.push_back((pos, row));
        // position pos - h has its whole window now
        if let Some(p) = self.next.filter(|&p| p + self.half <= pos) {
            self.emit(p)?;
        }
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        self.drain()?;
        self.inner.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what reaches it.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl PositionWriter for Log {
        fn start(&mut self, chrom: &str) -> Result<()> {
            self.0.push(format!("start {chrom}"));
            Ok(())
        }
        fn push(&mut self, pos: usize, probs: &[f32]) -> Result<()> {
            self.0.push(format!("{pos}:{:.4}", probs[0]));
            Ok(())
        }
        fn end(&mut self) -> Result<()> {
            self.0.push("end".into());
            Ok(())
        }
    }

    fn run(width: usize, recs: &[(&str, &[(usize, f32)])]) -> Vec<String> {
        let mut log = Log::default();
        {
            let mut s = Smoothed::new(&mut log, width);
            for (chrom, bases) in recs {
                s.start(chrom).unwrap();
                for &(p, v) in bases.iter() {
                    s.push(p, &[v, 1.0 - v]).unwrap();
                }
                s.end().unwrap();
            }
        }
        log.0
    }

    #[test]
    fn width_one_passes_through() {
        assert_eq!(run(1, &[("a", &[(0, 0.1), (1, 0.9)])]), ["start a", "0:0.1000", "1:0.9000", "end"]);
    }

    #[test]
    fn centered_means_clipped_at_the_ends() {
        // width 3: 0 -> mean(p0, p1), 1 -> mean(p0..p2), 2 -> mean(p1..p3), 3 -> mean(p2, p3)
        let got = run(3, &[("a", &[(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9)]), ("b", &[(0, 1.0)])]);
        assert_eq!(got, ["start a", "0:0.1500", "1:0.3000", "2:0.6000", "3:0.7500", "end", "start b", "0:1.0000", "end"]);
    }

    #[test]
    fn a_gap_ends_a_stretch() {
        // width 5 (h = 2): positions 0, 1 then 5, 6: windows never reach across the gap
        let got = run(5, &[("a", &[(0, 0.2), (1, 0.4), (5, 1.0), (6, 0.0)])]);
        assert_eq!(got, ["start a", "0:0.3000", "1:0.3000", "5:0.5000", "6:0.5000", "end"]);
    }

    #[test]
    fn matches_a_direct_mean_on_a_long_record() {
        let vals: Vec<(usize, f32)> = (0..200).map(|i| (i, ((i * 37) % 101) as f32 / 100.0)).collect();
        let got = run(11, &[("a", &vals)]);
        assert_eq!(got.len(), 202);
        for (i, line) in got[1..201].iter().enumerate() {
            let (lo, hi) = (i.saturating_sub(5), (i + 5).min(199));
            let want = vals[lo..=hi].iter().map(|v| v.1 as f64).sum::<f64>() / (hi - lo + 1) as f64;
            assert_eq!(line, &format!("{i}:{:.4}", want as f32), "position {i}");
        }
    }
}
