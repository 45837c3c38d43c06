//! Per-base head output, streamed: runs of the most probable label as BED6, or one label's
//! probability as bedGraph. Positions arrive in ascending order within a record; only the
//! current run is held.
//!
//! BED6: `chrom start end name score strand`, 0-based half-open, name = label, score =
//! round(1000 × the label's mean probability over the run), strand `.`. With a minimum run
//! length, a shorter run joins the run before it (the first of a record, the run after it),
//! and neighbouring runs of one label join; the score is then the mean over the joined run,
//! so only the run held back and the current one are in memory.
//! bedGraph: `chrom start end value` with the probability rounded to 3 decimals; neighbouring
//! bases with the same rounded value are merged into one line. Its track line waits for the
//! first record (or `into_inner` on an empty input), like a CSV header.

use std::io::Write;

use anyhow::Result;

use super::{non_finite, Pace};
use crate::heads::metrics::argmax;

pub trait PositionWriter {
    /// A new record (its id is the chromosome name).
    fn start(&mut self, chrom: &str) -> Result<()>;
    /// The probabilities of the next base.
    fn push(&mut self, pos: usize, probs: &[f32]) -> Result<()>;
    /// The record is complete.
    fn end(&mut self) -> Result<()>;
}

fn check(probs: &[f32]) -> Result<()> {
    if probs.iter().all(|p| p.is_finite()) { Ok(()) } else { Err(non_finite()) }
}

struct Run {
    start: usize,
    end: usize,
    label: usize,
    /// Every label's probability summed over the run (a joined run keeps its exact mean).
    sums: Vec<f64>,
}

impl Run {
    fn len(&self) -> usize {
        self.end - self.start
    }

    /// `next` (which starts where this one ends) joins this run, under `label`.
    fn join(&mut self, next: Run, label: usize) {
        self.end = next.end;
        self.label = label;
        self.sums.iter_mut().zip(&next.sums).for_each(|(a, b)| *a += b);
    }
}

pub struct Bed<W: Write> {
    pub out: W,
    labels: Vec<String>,
    /// Which labels get lines (all unless restricted).
    keep: Vec<bool>,
    chrom: String,
    /// The run being extended, and the one before it, held back until it cannot change.
    run: Option<Run>,
    held: Option<Run>,
    min_run: usize,
    pub lines: usize,
    pace: Pace,
}

impl<W: Write> Bed<W> {
    pub fn new(out: W, labels: &[String], keep: Vec<bool>) -> Self {
        Bed { out, labels: labels.to_vec(), keep, chrom: String::new(), run: None, held: None, min_run: 1, lines: 0, pace: Pace::new() }
    }

    /// Runs shorter than `n` bases join a neighbour (1: every run as called).
    pub fn with_min_run(mut self, n: usize) -> Self {
        self.min_run = n.max(1);
        self
    }

    pub fn into_inner(self) -> Result<W> {
        Ok(self.out)
    }

    /// The current run is complete: join it to the held one or hold it instead.
    fn close(&mut self) -> Result<()> {
        let Some(r) = self.run.take() else { return Ok(()) };
        let Some(mut h) = self.held.take() else {
            self.held = Some(r);
            return Ok(());
        };
        let touching = h.end == r.start;
        if touching && (h.label == r.label || r.len() < self.min_run) {
            let label = h.label;
            h.join(r, label);
            self.held = Some(h);
        } else if touching && h.len() < self.min_run {
            // a short first run of the record joins the run after it
            let label = r.label;
            h.join(r, label);
            self.held = Some(h);
        } else {
            self.write(&h)?;
            self.held = Some(r);
        }
        Ok(())
    }

    fn write(&mut self, r: &Run) -> Result<()> {
        if self.keep[r.label] {
            let score = (1000.0 * r.sums[r.label] / r.len() as f64).round() as u32;
            writeln!(self.out, "{}\t{}\t{}\t{}\t{}\t.", self.chrom, r.start, r.end, self.labels[r.label], score.min(1000))?;
            self.lines += 1;
        }
        Ok(())
    }
}

impl<W: Write> PositionWriter for Bed<W> {
    fn start(&mut self, chrom: &str) -> Result<()> {
        self.chrom.clear();
        self.chrom.push_str(chrom);
        Ok(())
    }
    fn push(&mut self, pos: usize, probs: &[f32]) -> Result<()> {
        check(probs)?;
        let label = argmax(probs);
        match &mut self.run {
            Some(r) if r.label == label && r.end == pos => {
                r.end = pos + 1;
                r.sums.iter_mut().zip(probs).for_each(|(s, p)| *s += *p as f64);
            }
            _ => {
                self.close()?;
                self.run = Some(Run { start: pos, end: pos + 1, label, sums: probs.iter().map(|&p| p as f64).collect() });
            }
        }
        Ok(())
    }
    fn end(&mut self) -> Result<()> {
        self.close()?;
        if let Some(h) = self.held.take() {
            self.write(&h)?;
        }
        Ok(self.pace.flush_if_due(&mut self.out)?)
    }
}

pub struct BedGraph<W: Write> {
    pub out: W,
    label: usize,
    chrom: String,
    /// (start, end, value in thousandths)
    run: Option<(usize, usize, u32)>,
    pub lines: usize,
    /// The track line until it is written.
    track: Option<String>,
    pace: Pace,
}

impl<W: Write> BedGraph<W> {
    pub fn new(out: W, label: usize, track_name: &str) -> Result<Self> {
        let track = format!("track type=bedGraph name=\"{}\"", track_name.replace('"', "'"));
        Ok(BedGraph { out, label, chrom: String::new(), run: None, lines: 0, track: Some(track), pace: Pace::new() })
    }

    fn write_track(&mut self) -> Result<()> {
        if let Some(t) = self.track.take() {
            writeln!(self.out, "{t}")?;
        }
        Ok(())
    }

    /// The destination, with the track line written (an empty input gets it too).
    pub fn into_inner(mut self) -> Result<W> {
        self.write_track()?;
        Ok(self.out)
    }

    fn close(&mut self) -> Result<()> {
        if let Some((s, e, v)) = self.run.take() {
            writeln!(self.out, "{}\t{s}\t{e}\t{}.{:03}", self.chrom, v / 1000, v % 1000)?;
            self.lines += 1;
        }
        Ok(())
    }
}

impl<W: Write> PositionWriter for BedGraph<W> {
    fn start(&mut self, chrom: &str) -> Result<()> {
        self.write_track()?;
        self.chrom.clear();
        self.chrom.push_str(chrom);
        Ok(())
    }
    fn push(&mut self, pos: usize, probs: &[f32]) -> Result<()> {
        check(probs)?;
        let v = (probs[self.label].clamp(0.0, 1.0) * 1000.0).round() as u32;
        match &mut self.run {
            Some((_, e, rv)) if *rv == v && *e == pos => *e = pos + 1,
            _ => {
                self.close()?;
                self.run = Some((pos, pos + 1, v));
            }
        }
        Ok(())
    }
    fn end(&mut self) -> Result<()> {
        self.close()?;
        Ok(self.pace.flush_if_due(&mut self.out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["coding".into(), "other".into()]
    }

    fn feed(w: &mut dyn PositionWriter, chrom: &str, p_coding: &[f32]) {
        w.start(chrom).unwrap();
        for (i, p) in p_coding.iter().enumerate() {
            w.push(i, &[*p, 1.0 - p]).unwrap();
        }
        w.end().unwrap();
    }

    #[test]
    fn bed_runs_by_hand() {
        let mut b = Bed::new(Vec::new(), &labels(), vec![true, true]);
        feed(&mut b, "chr1", &[0.9, 0.8, 0.3, 0.2, 0.1, 0.6]);
        feed(&mut b, "chr2", &[0.7]);
        let text = String::from_utf8(b.out).unwrap();
        // coding 0-2 mean .85 -> 850; other 2-5 mean(.7,.8,.9) = .8 -> 800; coding 5-6 .6 -> 600
        assert_eq!(text, "chr1\t0\t2\tcoding\t850\t.\nchr1\t2\t5\tother\t800\t.\nchr1\t5\t6\tcoding\t600\t.\nchr2\t0\t1\tcoding\t700\t.\n");
    }

    #[test]
    fn short_runs_join_a_neighbour() {
        // runs coding 0-3, other 3-4, coding 4-7, other 7-10; min 3: the 1-base run joins the
        // run before it, which then joins the next coding run: coding 0-7 (mean 5.6 / 7 = .8)
        let mut b = Bed::new(Vec::new(), &labels(), vec![true, true]).with_min_run(3);
        feed(&mut b, "a", &[0.9, 0.9, 0.9, 0.2, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1]);
        // a short first run joins the run after it: coding 0-4, mean (.2 + 2.7) / 4 = .725
        feed(&mut b, "b", &[0.2, 0.9, 0.9, 0.9]);
        // a record shorter than the minimum is one run
        feed(&mut b, "c", &[0.9]);
        let text = String::from_utf8(b.out).unwrap();
        assert_eq!(text, "a\t0\t7\tcoding\t800\t.\na\t7\t10\tother\t900\t.\nb\t0\t4\tcoding\t725\t.\nc\t0\t1\tcoding\t900\t.\n");
        // min 1 is the plain output
        let mut b = Bed::new(Vec::new(), &labels(), vec![true, true]).with_min_run(1);
        feed(&mut b, "b", &[0.2, 0.9, 0.9, 0.9]);
        assert_eq!(String::from_utf8(b.out).unwrap(), "b\t0\t1\tother\t800\t.\nb\t1\t4\tcoding\t900\t.\n");
    }

    #[test]
    fn bed_keeps_chosen_labels_only() {
        let mut b = Bed::new(Vec::new(), &labels(), vec![true, false]);
        feed(&mut b, "x", &[0.9, 0.1, 0.9, 0.9]);
        assert_eq!(String::from_utf8(b.out).unwrap(), "x\t0\t1\tcoding\t900\t.\nx\t2\t4\tcoding\t900\t.\n");
    }

    #[test]
    fn bedgraph_merges_equal_values() {
        let mut g = BedGraph::new(Vec::new(), 0, "t p(coding)").unwrap();
        feed(&mut g, "c", &[0.1234, 0.1236, 0.5, 1.0]);
        let text = String::from_utf8(g.into_inner().unwrap()).unwrap();
        // .1234 -> 0.123, .1236 -> 0.124
        assert_eq!(text, "track type=bedGraph name=\"t p(coding)\"\nc\t0\t1\t0.123\nc\t1\t2\t0.124\nc\t2\t3\t0.500\nc\t3\t4\t1.000\n");
        let mut g = BedGraph::new(Vec::new(), 0, "t").unwrap();
        feed(&mut g, "c", &[0.25, 0.2501, 0.2502]);
        assert_eq!(String::from_utf8(g.into_inner().unwrap()).unwrap(), "track type=bedGraph name=\"t\"\nc\t0\t3\t0.250\n");
    }

    #[test]
    fn bedgraph_track_line_waits_for_a_record() {
        let mut g = BedGraph::new(Vec::new(), 0, "t").unwrap();
        assert!(g.out.is_empty());
        assert!(g.push(0, &[f32::NAN, 0.5]).is_err());
        assert_eq!(String::from_utf8(g.into_inner().unwrap()).unwrap(), "track type=bedGraph name=\"t\"\n");
    }
}
