//! Sinks that write a record's feature rows as they are computed, one row per position:
//! CSV rows, or raw little-endian f32 bodies (npy and safetensors).

use std::io::Write;

use anyhow::Result;

use super::csv::Csv;
use super::non_finite;
use crate::embed::Sink;

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
pub struct RawRows<'a> {
    pub out: &'a mut dyn Write,
}

impl Sink for RawRows<'_> {
    fn linear(&self) -> bool {
        false
    }
    fn add(&mut self, _pos: usize, row: &[f32], _weight: f32) -> Result<()> {
        if !row.iter().all(|v| v.is_finite()) {
            return Err(non_finite());
        }
        Ok(self.out.write_all(bytemuck::cast_slice(row))?)
    }
}
