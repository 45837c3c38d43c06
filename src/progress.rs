//! Progress on stderr when it is a terminal, nothing otherwise: records, bases, the rate and,
//! for files, the share of the input read (compressed bytes taken over the files' size).
//!
//! The display ticks on a timer, so it moves (and shows the elapsed time) while one long record
//! is computed. `DNA_MAMBA_PROGRESS=always` draws it on any stderr, one line per redraw (for
//! tests and logs).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};

/// Compressed bytes of the inputs read so far and their total size (0: unknown, e.g. stdin);
/// set by the record loop, read by the display. One run reads one set of inputs at a time.
static INPUT_READ: AtomicU64 = AtomicU64::new(0);
static INPUT_SIZE: AtomicU64 = AtomicU64::new(0);

/// The inputs about to be read have `size` bytes in all, if known.
pub fn input_started(size: Option<u64>) {
    INPUT_READ.store(0, Ordering::Relaxed);
    INPUT_SIZE.store(size.unwrap_or(0), Ordering::Relaxed);
}

/// `bytes` of the inputs (as stored, compressed) have been read.
pub fn input_read(bytes: u64) {
    INPUT_READ.store(bytes, Ordering::Relaxed);
}

/// " 42% of the input" when the size is known.
fn input_share() -> Option<f64> {
    let size = INPUT_SIZE.load(Ordering::Relaxed);
    (size > 0).then(|| (INPUT_READ.load(Ordering::Relaxed) as f64 / size as f64).min(1.0) * 100.0)
}

/// `1.20 M`, `870 k`, `12`: three significant digits at most, SI prefixes.
pub fn human(x: f64) -> String {
    let (v, unit) = match x {
        x if x >= 1e12 => (x / 1e12, " T"),
        x if x >= 1e9 => (x / 1e9, " G"),
        x if x >= 1e6 => (x / 1e6, " M"),
        x if x >= 1e3 => (x / 1e3, " k"),
        x => (x, ""),
    };
    let digits = if v >= 100.0 || unit.is_empty() { 0 } else if v >= 10.0 { 1 } else { 2 };
    format!("{v:.digits$}{unit}")
}

/// The text after the spinner and the elapsed time.
fn line(records: u64, state: &ProgressState) -> String {
    let mut s = format!("{records} records, {} bases, {} bases/s", indicatif::HumanCount(state.pos()), human(state.per_sec()));
    if let Some(p) = input_share() {
        let _ = write!(s, ", {p:.0}% of the input read");
    }
    s
}

/// Every redraw on a line of its own, for a stderr that is not a terminal.
#[derive(Debug)]
struct Lines;

impl TermLike for Lines {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        eprintln!("{}", s.trim_end());
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.write_line(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    finished_bases: u64,
    records: Arc<AtomicU64>,
    /// Drawn with [`Lines`]: leave the last line standing at the end.
    forced: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let forced = std::env::var_os("DNA_MAMBA_PROGRESS").is_some_and(|v| v == "always");
        let records = Arc::new(AtomicU64::new(0));
        let target = if forced {
            Some(ProgressDrawTarget::term_like(Box::new(Lines)))
        } else {
            std::io::stderr().is_terminal().then(ProgressDrawTarget::stderr)
        };
        let bar = target.filter(|_| !quiet).map(|target| {
            let b = ProgressBar::with_draw_target(None, target);
            let count = records.clone();
            let style = ProgressStyle::with_template("{spinner} {elapsed_precise} {status} {msg}")
                .expect("static template")
                .with_key("status", move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&line(count.load(Ordering::Relaxed), s));
                });
            b.set_style(style);
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress { bar, finished_bases: 0, records, forced }
    }

    /// `done` bases of the current record are finished (called within long records too).
    pub fn bases(&mut self, done: usize) {
        if let Some(b) = &self.bar {
            b.set_position(self.finished_bases + done as u64);
        }
    }

    pub fn record_done(&mut self, len: usize) {
        self.finished_bases += len as u64;
        self.records.fetch_add(1, Ordering::Relaxed);
        self.bases(0);
    }

    pub fn warn(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            if self.forced {
                b.finish();
            } else {
                b.finish_and_clear();
            }
        }
    }
}

impl Drop for Progress {
    /// A run that fails must not leave the ticker drawing over its error line.
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            if !b.is_finished() {
                b.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_rates() {
        assert_eq!(human(0.0), "0");
        assert_eq!(human(999.4), "999");
        assert_eq!(human(1234.0), "1.23 k");
        assert_eq!(human(1_200_000.0), "1.20 M");
        assert_eq!(human(45_600_000.0), "45.6 M");
        assert_eq!(human(3.2e9), "3.20 G");
    }
}
