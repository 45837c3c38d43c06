//! Held-out predictions: probabilities of every row, and `--predictions` as CSV.

use std::path::Path;

use anyhow::Result;

use super::featurize::Matrix;
use crate::heads::metrics::argmax;
use crate::heads::{Head, Scratch};
use crate::output::csv::Csv;
use crate::output::Output;

/// Probabilities of every row of `x` (rows × labels, row-major).
pub(super) fn predict_all(head: &Head, x: &[f32]) -> Vec<f32> {
    let (d, c) = (head.dim(), head.n_labels());
    let mut out = vec![0f32; x.len() / d.max(1) * c];
    use rayon::prelude::*;
    out.par_chunks_mut(c * 256).zip(x.par_chunks(d * 256)).for_each(|(o, x)| {
        let mut s = Scratch::default();
        for (o, x) in o.chunks_mut(c).zip(x.chunks(d)) {
            head.predict(x, &mut s, o);
        }
    });
    out
}

/// `--predictions`: one row per held-out row, its true and predicted label and every probability.
pub(super) fn write(path: &Path, inputs: &[String], head: &Head, m: &Matrix, probs: &[f32]) -> Result<()> {
    let c = head.n_labels();
    let mut w = Csv::new(Output::open(Some(path), inputs)?);
    let position = m.names.first().is_some_and(|n| n.1.is_some());
    let lead: &[&str] = if position { &["chrom", "pos", "label", "predicted"] } else { &["id", "label", "predicted"] };
    let cols: Vec<String> = head.meta.labels.iter().map(|l| format!("p_{l}")).collect();
    w.header(lead, &cols)?;
    for (i, (id, pos)) in m.names.iter().enumerate() {
        let p = &probs[i * c..(i + 1) * c];
        let mut row = w.start_row();
        row.text(id)?;
        if let Some(pos) = pos {
            row.int(*pos)?;
        }
        row.text(&head.meta.labels[m.y[i] as usize])?.text(&head.meta.labels[argmax(p)])?.floats(p.iter().copied())?;
        row.end()?;
    }
    w.into_inner()?.finish()
}
