//! Progress on stderr: a bases/s spinner when stderr is a terminal, nothing otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    finished_bases: u64,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {human_pos} bases ({per_sec}) {msg}")
                    .expect("static template"),
            );
            b
        });
        Progress { bar, finished_bases: 0 }
    }

    /// `done` bases of the current record are finished (called within long records too).
    pub fn bases(&mut self, done: usize) {
        if let Some(b) = &self.bar {
            b.set_position(self.finished_bases + done as u64);
        }
    }

    pub fn record_done(&mut self, len: usize) {
        self.finished_bases += len as u64;
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
            b.finish_and_clear();
        }
    }
}
