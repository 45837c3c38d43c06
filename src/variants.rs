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
//! - `plantcad`: PlantCaduceus's zero-shot score (its `zero_shot_score.py`): the 512 bases
//!   from p-255 to p+256 around the 0-based position p, N where that runs past the sequence,
//!   the variant base replaced by [MASK], the forward strand only, and log(p_alt / p_ref) from
//!   the softmax over the A/C/G/T logits at the masked position. Unlike `mllr` the window is
//!   fixed and asymmetric and the strands are not averaged (for a PS model the one pass already
//!   reads both strands), so a variant written on the other strand can score differently.

use std::collections::HashMap;

use anyhow::Result;

use crate::backend::Backend;
use crate::embed::{Embedder, Feature, LogProbJoin, Sink, Strand};

/// The PlantCaduceus window: 512 bases with the variant at index 255.
pub const PLANTCAD_WINDOW: usize = 512;
pub const PLANTCAD_CENTER: usize = 255;

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

pub struct Scorer<B: Backend> {
    emb: Embedder<B>,
    pub score_context: usize,
    pub embed_window: usize,
    /// Bases per packed context for the per-variant windows (backends that pack).
    pub pack_bases: usize,
}

impl<B: Backend> Scorer<B> {
    pub fn new(mut emb: Embedder<B>, score_context: usize, embed_window: usize) -> Self {
        // scores are log-ratios averaged over the strands, so strands join as log-probabilities
        emb.set_log_prob_join(LogProbJoin::MeanLogProb);
        Scorer { emb, score_context, embed_window, pack_bases: 131_072 }
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

    /// Reference bases as the model's token ids.
    pub fn tokens(&self, seq: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        self.emb.model().vocab.encode_into(seq, &mut t);
        t
    }

    /// The PlantCaduceus window around 0-based `pos` of a sequence of `len` bases: the bases
    /// of `fetch(lo, hi)` placed at their offsets, N (its token) elsewhere.
    pub fn plantcad_window(&self, pos: usize, len: usize, fetch: &mut dyn FnMut(usize, usize) -> Result<Vec<u8>>) -> Result<Vec<u8>> {
        let first = pos as i64 - PLANTCAD_CENTER as i64;
        let lo = first.max(0) as usize;
        let hi = ((first + PLANTCAD_WINDOW as i64) as usize).min(len);
        let n = self.emb.model().vocab.id(b'N');
        let mut t = vec![n; PLANTCAD_WINDOW];
        let inside = self.tokens(&fetch(lo, hi)?);
        let at = (lo as i64 - first) as usize;
        t[at..at + inside.len()].copy_from_slice(&inside);
        Ok(t)
    }

    fn mask(&self) -> Result<u8> {
        let v = &self.emb.model().vocab;
        v.mask.ok_or_else(|| anyhow::anyhow!("the model's vocabulary ({}) has no [MASK] token: masked scores need one", v.source))
    }

    /// Masked LLR for each alt of each window: the reference window with its centre replaced
    /// by [MASK], all windows of the batch run together (packed where the backend packs).
    pub fn masked_llr(&mut self, windows: &[Window]) -> Result<Vec<Vec<f32>>> {
        self.masked_scores(windows, Strand::Both)
    }

    /// The PlantCaduceus score of each alt of each `plantcad_window`: as `masked_llr` on the
    /// forward strand alone.
    pub fn plantcad(&mut self, windows: &[Window]) -> Result<Vec<Vec<f32>>> {
        self.masked_scores(windows, Strand::Fwd)
    }

    fn masked_scores(&mut self, windows: &[Window], strand: Strand) -> Result<Vec<Vec<f32>>> {
        let mask = self.mask()?;
        let masked: Vec<Vec<u8>> = windows
            .iter()
            .map(|w| {
                let mut t = w.tokens.clone();
                t[w.center] = mask;
                t
            })
            .collect();
        self.emb.set_output(strand, Feature::Logits)?;
        self.fit_context(windows);
        let refs: Vec<&[u8]> = masked.iter().map(|t| t.as_slice()).collect();
        let centers: Vec<usize> = windows.iter().map(|w| w.center).collect();
        let rows = self.emb.rows_at(&refs, &centers, self.pack_bases)?;
        Ok(windows.iter().zip(rows).map(|(w, row)| w.alt_cols.iter().map(|&a| row[a] - row[w.ref_col]).collect()).collect())
    }

    /// (cosine similarity, L2 distance) between the mean strand-averaged hidden state of the
    /// reference window and of each alternate window, over the `embed_window` bases centred
    /// on the variant; all windows of the batch run together.
    pub fn embedding_distance(&mut self, windows: &[Window]) -> Result<Vec<Vec<(f32, f32)>>> {
        // each distinct (sequence, range) runs once: records at the same position (one per
        // ALT, or a VCF listing a site twice) share their reference window
        let mut index: HashMap<(Vec<u8>, (usize, usize)), usize> = HashMap::new();
        let mut seqs: Vec<Vec<u8>> = Vec::new();
        let mut ranges = Vec::new();
        let mut slot = |t: Vec<u8>, range: (usize, usize), seqs: &mut Vec<Vec<u8>>, ranges: &mut Vec<(usize, usize)>| -> usize {
            *index.entry((t, range)).or_insert_with_key(|(t, range)| {
                seqs.push(t.clone());
                ranges.push(*range);
                seqs.len() - 1
            })
        };
        let h = self.embed_window / 2;
        let acgt = self.emb.model().vocab.acgt;
        let mut slots: Vec<(usize, Vec<usize>)> = Vec::with_capacity(windows.len());
        for w in windows {
            let range = (w.center.saturating_sub(h), (w.center + h + 1).min(w.tokens.len()));
            let r = slot(w.tokens.clone(), range, &mut seqs, &mut ranges);
            let alts = w
                .alt_cols
                .iter()
                .map(|&a| {
                    let mut t = w.tokens.clone();
                    t[w.center] = acgt[a];
                    slot(t, range, &mut seqs, &mut ranges)
                })
                .collect();
            slots.push((r, alts));
        }
        self.emb.set_output(Strand::Both, Feature::Hidden)?;
        self.fit_context(windows);
        let refs: Vec<&[u8]> = seqs.iter().map(|t| t.as_slice()).collect();
        let sums = self.emb.range_sums(&refs, &ranges, self.pack_bases)?;
        Ok(windows
            .iter()
            .zip(&slots)
            .map(|(w, (r, alts))| {
                // the ranges of a variant's windows are equal: compare sums, not means
                let r = &sums[*r];
                let n = ranges_len(w, h) as f64;
                alts.iter()
                    .map(|&k| {
                        let a = &sums[k];
                        let dot: f64 = r.iter().zip(a).map(|(x, y)| x * y).sum();
                        let nr = r.iter().map(|x| x * x).sum::<f64>().sqrt();
                        let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
                        let l2 = r.iter().zip(a).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt() / n;
                        ((dot / (nr * na).max(1e-30)) as f32, l2 as f32)
                    })
                    .collect()
            })
            .collect())
    }

    fn fit_context(&mut self, windows: &[Window]) {
        let longest = windows.iter().map(|w| w.tokens.len()).max().unwrap_or(0);
        self.emb.context = longest.max(crate::tiling::MIN_CONTEXT);
    }
}

/// Bases averaged for the embedding distance of window `w` (half-width `h`).
fn ranges_len(w: &Window, h: usize) -> usize {
    (w.center + h + 1).min(w.tokens.len()) - w.center.saturating_sub(h)
}

/// The reference window around one SNV, for the per-variant scores.
#[derive(Clone, Debug)]
pub struct Window {
    /// reference tokens of the window
    pub tokens: Vec<u8>,
    /// the variant's index in `tokens`
    pub center: usize,
    /// A,C,G,T column of the reference base and of each alternate base
    pub ref_col: usize,
    pub alt_cols: Vec<usize>,
}

/// Why an allele (or a whole record) is not scored: a short code for the VCF INFO field (INFO
/// strings cannot hold spaces, commas, semicolons or '=') and a readable reason for stderr and
/// the TSV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// POS 0 (a telomere): no base to score.
    NoPosition,
    /// ALT is `.`.
    NoAlt,
    /// REF or ALT is not one base; the text names which ("REF AC", "ALT <DEL>").
    NotSnv(String),
    /// ALT `*`: the allele is missing because of a deletion on another allele.
    StarAllele,
    /// ALT is the REF base.
    AltEqualsRef,
    /// A single base that is not A, C, G or T ("REF N", "ALT R").
    UnknownBase(String),
    UnknownSequence { chrom: String, fasta: String },
    PastEnd { pos: usize, chrom: String, len: usize },
    RefMismatch { vcf: String, fasta: char },
}

/// The codes of `Skip` with their meaning, for the VCF header's description.
pub const SKIP_CODES: [(&str, &str); 9] = [
    ("NO_POSITION", "POS is 0"),
    ("NO_ALT", "ALT is missing"),
    ("NOT_SNV", "REF or ALT is not one base"),
    ("STAR_ALLELE", "ALT is * (a deletion on another allele)"),
    ("ALT_EQUALS_REF", "ALT equals REF"),
    ("UNKNOWN_BASE", "REF or ALT is not A C G or T"),
    ("UNKNOWN_SEQUENCE", "CHROM is not in the FASTA"),
    ("PAST_END", "POS is past the end of the sequence"),
    ("REF_MISMATCH", "REF disagrees with the FASTA"),
];

impl Skip {
    pub fn code(&self) -> &'static str {
        let i = match self {
            Skip::NoPosition => 0,
            Skip::NoAlt => 1,
            Skip::NotSnv(_) => 2,
            Skip::StarAllele => 3,
            Skip::AltEqualsRef => 4,
            Skip::UnknownBase(_) => 5,
            Skip::UnknownSequence { .. } => 6,
            Skip::PastEnd { .. } => 7,
            Skip::RefMismatch { .. } => 8,
        };
        SKIP_CODES[i].0
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NoPosition => write!(f, "no position (POS 0)"),
            Skip::NoAlt => write!(f, "no alternate allele"),
            Skip::NotSnv(what) => write!(f, "not an SNV ({what})"),
            Skip::StarAllele => write!(f, "ALT * (a deletion on another allele) is not scored"),
            Skip::AltEqualsRef => write!(f, "ALT equals REF"),
            Skip::UnknownBase(what) => write!(f, "{what} is not A, C, G or T"),
            Skip::UnknownSequence { chrom, fasta } => write!(f, "sequence {chrom} is not in {fasta}"),
            Skip::PastEnd { pos, chrom, len } => write!(f, "position {pos} is past the end of {chrom} ({len} bases)"),
            Skip::RefMismatch { vcf, fasta } => write!(f, "REF {vcf} disagrees with the FASTA ({fasta})"),
        }
    }
}

/// The alleles of one record: the REF base's column, and for each ALT its column or why it is
/// not scored. `Err` when nothing of the record can be scored whatever the FASTA says.
pub fn classify_alleles(ref_b: &str, alts: &[String]) -> std::result::Result<(usize, Vec<std::result::Result<usize, Skip>>), Skip> {
    let one_base = |s: &str| -> Option<u8> { (s.len() == 1).then(|| s.as_bytes()[0]) };
    let ref_col = match one_base(ref_b) {
        None => return Err(Skip::NotSnv(format!("REF {ref_b}"))),
        Some(b) => base_index(b).ok_or_else(|| Skip::UnknownBase(format!("REF {ref_b}")))?,
    };
    if alts.is_empty() {
        return Err(Skip::NoAlt);
    }
    let cols = alts
        .iter()
        .map(|alt| match one_base(alt) {
            _ if alt == "*" => Err(Skip::StarAllele),
            None => Err(Skip::NotSnv(format!("ALT {alt}"))),
            Some(b) => match base_index(b) {
                None => Err(Skip::UnknownBase(format!("ALT {alt}"))),
                Some(c) if c == ref_col => Err(Skip::AltEqualsRef),
                Some(c) => Ok(c),
            },
        })
        .collect();
    Ok((ref_col, cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alleles_are_classified_one_by_one() {
        let alts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (r, cols) = classify_alleles("c", &alts(&["A", "*", "C", "N", "AT", "<DEL>"])).unwrap();
        assert_eq!(r, 1);
        let codes: Vec<&str> = cols.iter().map(|c| c.as_ref().map_or_else(|s| s.code(), |_| "ok")).collect();
        assert_eq!(codes, ["ok", "STAR_ALLELE", "ALT_EQUALS_REF", "UNKNOWN_BASE", "NOT_SNV", "NOT_SNV"]);
        assert_eq!(classify_alleles("AC", &alts(&["A"])).unwrap_err().code(), "NOT_SNV");
        assert_eq!(classify_alleles("N", &alts(&["A"])).unwrap_err().code(), "UNKNOWN_BASE");
        assert_eq!(classify_alleles("A", &[]).unwrap_err(), Skip::NoAlt);
        // codes are valid INFO values
        for (code, _) in SKIP_CODES {
            assert!(code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{code}");
        }
    }
}
