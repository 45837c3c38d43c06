//! Zero-shot variant effect scores (model-format.md §1.7): log-likelihood ratios from the
//! masked-LM head and embedding distances, all averaged over both strands.
//!
//! - `llr`: log P(alt) - log P(ref) at the variant from the reference sequence, unmasked.
//!   Chromosomes are cut into the same mirror-symmetric tiles `embed` uses, so one pass per
//!   tile serves every variant kept in it, and a variant scores the same on either strand.
//! - `mllr`: the same with the variant position replaced by [MASK], in a window of
//!   `score_context` bases centred on it (one window per variant).
//! - `cos`, `l2`: distance between the mean strand-averaged hidden states of the reference and
//!   alternate windows over the `embed_window` bases centred on the variant.

use anyhow::Result;

use crate::backend::Backend;
use crate::embed::{Embedder, Feature, Sink, Strand};
use crate::tokenizer::{self, ACGT};

/// [MASK] in the Caduceus vocabulary; its own complement.
pub const MASK: u8 = 3;

/// Column of a base in the A, C, G, T log-probability rows.
pub fn base_index(b: u8) -> Option<usize> {
    match b.to_ascii_uppercase() {
        b'A' => Some(0),
        b'C' => Some(1),
        b'G' => Some(2),
        b'T' => Some(3),
        _ => None,
    }
}

/// Collects feature rows of a context in memory (contexts here are windows or tiles).
struct Rows {
    width: usize,
    rows: Vec<f32>,
}

impl Sink for Rows {
    fn linear(&self) -> bool {
        true
    }
    fn add(&mut self, pos: usize, row: &[f32], weight: f32) -> Result<()> {
        for (o, v) in self.rows[pos * self.width..][..self.width].iter_mut().zip(row) {
            *o += weight * v;
        }
        Ok(())
    }
}

/// Mean of rows over positions `lo..hi`.
struct RangeMean {
    lo: usize,
    hi: usize,
    sum: Vec<f64>,
}

impl Sink for RangeMean {
    fn linear(&self) -> bool {
        true
    }
    fn add(&mut self, pos: usize, row: &[f32], weight: f32) -> Result<()> {
        if (self.lo..self.hi).contains(&pos) {
            for (s, v) in self.sum.iter_mut().zip(row) {
                *s += (weight * v) as f64;
            }
        }
        Ok(())
    }
}

pub struct Scorer<B: Backend> {
    emb: Embedder<B>,
    pub score_context: usize,
    pub embed_window: usize,
    hidden_width: usize,
}

impl<B: Backend> Scorer<B> {
    pub fn new(emb: Embedder<B>, score_context: usize, embed_window: usize, hidden_width: usize) -> Self {
        Scorer { emb, score_context, embed_window, hidden_width }
    }

    /// Strand-averaged A,C,G,T log-probabilities of every position of `tokens` (one context).
    pub fn log_probs(&mut self, tokens: &[u8]) -> Result<Vec<f32>> {
        self.emb.set_output(Strand::Both, Feature::Logits)?;
        self.emb.context = tokens.len().max(crate::tiling::MIN_CONTEXT);
        let mut rows = Rows { width: 4, rows: vec![0.0; tokens.len() * 4] };
        self.emb.record(tokens, &mut rows, &mut |_| {})?;
        Ok(rows.rows)
    }

    /// The window of `score_context` bases centred on `pos` (clipped to `0..len`): its range,
    /// symmetric so that the reverse-complement representation gets the mirrored window.
    pub fn window(&self, pos: usize, len: usize) -> (usize, usize) {
        let h = self.score_context / 2;
        (pos.saturating_sub(h), (pos + h + 1).min(len))
    }

    /// Masked LLR for each alt at `center` of `window` (tokens of the reference window).
    pub fn masked_llr(&mut self, window: &[u8], center: usize, ref_col: usize, alt_cols: &[usize]) -> Result<Vec<f32>> {
        let mut t = window.to_vec();
        t[center] = MASK;
        let lp = self.log_probs(&t)?;
        let row = &lp[center * 4..][..4];
        Ok(alt_cols.iter().map(|&a| row[a] - row[ref_col]).collect())
    }

    fn mean_hidden(&mut self, tokens: &[u8], center: usize) -> Result<Vec<f64>> {
        self.emb.set_output(Strand::Both, Feature::Hidden)?;
        self.emb.context = tokens.len().max(crate::tiling::MIN_CONTEXT);
        let h = self.embed_window / 2;
        let (lo, hi) = (center.saturating_sub(h), (center + h + 1).min(tokens.len()));
        let mut m = RangeMean { lo, hi, sum: vec![0.0; self.hidden_width] };
        self.emb.record(tokens, &mut m, &mut |_| {})?;
        let n = (hi - lo) as f64;
        Ok(m.sum.iter().map(|s| s / n).collect())
    }

    /// (cosine similarity, L2 distance) between the reference and each alternate window.
    pub fn embedding_distance(&mut self, window: &[u8], center: usize, alt_bases: &[u8]) -> Result<Vec<(f32, f32)>> {
        let r = self.mean_hidden(window, center)?;
        let mut out = Vec::new();
        for &b in alt_bases {
            let mut t = window.to_vec();
            t[center] = ACGT[base_index(b).expect("checked SNV")];
            let a = self.mean_hidden(&t, center)?;
            let dot: f64 = r.iter().zip(&a).map(|(x, y)| x * y).sum();
            let nr = r.iter().map(|x| x * x).sum::<f64>().sqrt();
            let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            let l2 = r.iter().zip(&a).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
            out.push(((dot / (nr * na).max(1e-30)) as f32, l2 as f32));
        }
        Ok(out)
    }
}

/// Tokenize reference bases for scoring.
pub fn tokens(seq: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    tokenizer::encode_into(seq, &mut t);
    t
}
