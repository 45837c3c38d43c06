//! Every result a command writes goes through here: where it goes (`file`: stdout, devices,
//! atomic files, BGZF), and one module per format.
//!
//! Conventions shared by the formats: nothing reaches the destination before the first
//! record has been read (so a wrong input leaves stdout empty), rows reach a pipe as records
//! finish (`Pace`), and a non-finite number is an error, never written as a result.

pub mod bed;
pub mod csv;
pub mod file;
pub mod npy;
pub mod rows;
pub mod safetensors;
pub mod smooth;
pub mod vcf;

use std::time::{Duration, Instant};

pub use file::{is_broken_pipe, AtomicDir, AtomicFile, Output};

/// How often buffered rows are passed on to the destination at record boundaries: often
/// enough that `| head` stops a run soon and a pipeline sees progress, rarely enough to cost
/// nothing.
const PUSH_EVERY: Duration = Duration::from_millis(200);

pub(crate) struct Pace(Instant);

impl Pace {
    pub fn new() -> Self {
        Pace(Instant::now())
    }

    /// Whether it is time to push buffered output on (and restart the clock).
    pub fn due(&mut self) -> bool {
        let due = self.0.elapsed() >= PUSH_EVERY;
        if due {
            self.0 = Instant::now();
        }
        due
    }

    /// Flush `out` if it is time to.
    pub fn flush_if_due(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        if self.due() { out.flush() } else { Ok(()) }
    }
}

/// The error for a NaN or infinity about to be written.
pub fn non_finite() -> anyhow::Error {
    anyhow::anyhow!("the model produced a non-finite value (NaN or infinity); no result is written for it")
}
