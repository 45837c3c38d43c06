//! Feature vectors for heads, from the backbone (through the embedder, on whichever backend
//! runs it) or from k-mer counts, behind one trait so `train` and `classify` share the loop.

use anyhow::{bail, Result};

use super::kmer::Kmers;
use crate::pool::{Centered, ReadPool};
use super::{Features, Pooling, Source};
use crate::backend::Backend;
use crate::embed::Embedder;
use crate::model::vocab::Vocab;

pub trait Featurizer {
    /// Width of one feature vector.
    fn dim(&self) -> usize;
    /// The token ids the features read (the model's; k-mers read the Caduceus ids).
    fn vocab(&self) -> &Vocab;
    /// Where the features are computed, for the summary line.
    fn describe(&self) -> String;
    /// Read level: one vector for the record.
    fn read(&mut self, tokens: &[u8], out: &mut Vec<f32>, progress: &mut dyn FnMut(usize)) -> Result<()>;
    /// The longest record `read_batch` takes, or `None` where batching gains nothing (then
    /// callers use `read`, one record at a time).
    fn batch_limit(&self) -> Option<usize> {
        None
    }
    /// Bases a batch for `read_batch` should hold.
    fn batch_bases(&self) -> usize {
        crate::embed::PACK_BASES
    }
    /// Read level, several records (each within `batch_limit`) at once: their vectors
    /// appended to `out` in order, equal to what `read` gives for each.
    fn read_batch(&mut self, records: &[&[u8]], out: &mut Vec<f32>) -> Result<()> {
        let mut row = Vec::new();
        for r in records {
            self.read(r, &mut row, &mut |_| {})?;
            out.extend_from_slice(&row);
        }
        Ok(())
    }
    /// Position level: every position's vector, in order.
    fn positions(&mut self, tokens: &[u8], emit: &mut dyn FnMut(usize, &[f32]) -> Result<()>, progress: &mut dyn FnMut(usize)) -> Result<()>;
    /// Position level: the vectors of the ascending positions `at`, appended to `out`.
    fn positions_at(&mut self, tokens: &[u8], at: &[usize], out: &mut Vec<f32>, progress: &mut dyn FnMut(usize)) -> Result<()> {
        let mut next = 0;
        self.positions(
            tokens,
            &mut |p, f| {
                if next < at.len() && at[next] == p {
                    out.extend_from_slice(f);
                    next += 1;
                }
                Ok(())
            },
            progress,
        )
    }
}

/// Backbone hidden states, pooled.
pub struct BackboneFeatures<B: Backend> {
    pub emb: Embedder<B>,
    pub pooling: Pooling,
    pub backend: String,
}

impl<B: Backend> BackboneFeatures<B> {
    pub fn new(emb: Embedder<B>, pooling: Pooling) -> Self {
        let backend = emb.engine().backend().name();
        BackboneFeatures { emb, pooling, backend }
    }
}

impl<B: Backend> Featurizer for BackboneFeatures<B> {
    fn vocab(&self) -> &Vocab {
        &self.emb.model().vocab
    }
    fn dim(&self) -> usize {
        ReadPool::dim(self.pooling, self.emb.width())
    }
    fn describe(&self) -> String {
        self.backend.clone()
    }
    fn read(&mut self, tokens: &[u8], out: &mut Vec<f32>, progress: &mut dyn FnMut(usize)) -> Result<()> {
        let mut pool = ReadPool::new(self.pooling, tokens.len(), self.emb.width());
        self.emb.record(tokens, &mut pool, progress)?;
        pool.finish(out);
        Ok(())
    }
    fn batch_limit(&self) -> Option<usize> {
        // short records go several to a context where the backend packs (the CPU and the GPU do)
        self.emb.engine().supports_packing().then_some(self.emb.context)
    }
    fn batch_bases(&self) -> usize {
        self.emb.engine().pack_bases()
    }
    fn read_batch(&mut self, records: &[&[u8]], out: &mut Vec<f32>) -> Result<()> {
        let width = self.emb.width();
        let mut pools: Vec<ReadPool> = records.iter().map(|r| ReadPool::new(self.pooling, r.len(), width)).collect();
        let mut queries = Vec::new();
        let mut bins = Vec::new();
        for (i, pool) in pools.iter().enumerate() {
            for (b, (s, e)) in pool.bin_ranges().into_iter().enumerate() {
                if s < e {
                    queries.push((i, s, e));
                    bins.push(b);
                }
            }
        }
        let sums = self.emb.query_sums(records, &queries, self.emb.engine().pack_bases())?;
        for ((&(i, _, _), &b), sum) in queries.iter().zip(&bins).zip(&sums) {
            pools[i].add_bin_sum(b, sum);
        }
        let mut row = Vec::new();
        for pool in &pools {
            pool.finish(&mut row);
            out.extend_from_slice(&row);
        }
        Ok(())
    }
    fn positions(&mut self, tokens: &[u8], emit: &mut dyn FnMut(usize, &[f32]) -> Result<()>, progress: &mut dyn FnMut(usize)) -> Result<()> {
        let Pooling::Window(w) = self.pooling else { bail!("internal: pooling {} is not per position", self.pooling) };
        let width = self.emb.width();
        let mut sink = Centered::new(w, tokens.len(), width, emit);
        self.emb.record(tokens, &mut sink, progress)?;
        if !sink.done() {
            bail!("internal: not every position was computed");
        }
        Ok(())
    }
}

/// Canonical k-mer frequencies (no model).
pub struct KmerFeatures {
    pub kmers: Kmers,
    pub pooling: Pooling,
    /// The Caduceus ids, which `kmer` reads.
    vocab: Vocab,
}

impl KmerFeatures {
    pub fn new(ks: &[usize], pooling: Pooling) -> Result<Self> {
        if let Pooling::Bins(_) = pooling {
            bail!("k-mer features are pooled over the whole record (--pool mean) or a window (--pool window:W)");
        }
        Ok(KmerFeatures { kmers: Kmers::new(ks)?, pooling, vocab: crate::model::vocab::caduceus() })
    }
}

impl Featurizer for KmerFeatures {
    fn vocab(&self) -> &Vocab {
        &self.vocab
    }
    fn dim(&self) -> usize {
        self.kmers.dim()
    }
    fn describe(&self) -> String {
        format!("k-mer features (k = {:?}, no model)", self.kmers.ks)
    }
    fn read(&mut self, tokens: &[u8], out: &mut Vec<f32>, progress: &mut dyn FnMut(usize)) -> Result<()> {
        out.resize(self.dim(), 0.0);
        self.kmers.record(tokens, out);
        progress(tokens.len());
        Ok(())
    }
    fn positions(&mut self, tokens: &[u8], emit: &mut dyn FnMut(usize, &[f32]) -> Result<()>, progress: &mut dyn FnMut(usize)) -> Result<()> {
        let Pooling::Window(w) = self.pooling else { bail!("internal: pooling {} is not per position", self.pooling) };
        self.kmers.each_window(tokens, w, emit)?;
        progress(tokens.len());
        Ok(())
    }
    fn positions_at(&mut self, tokens: &[u8], at: &[usize], out: &mut Vec<f32>, progress: &mut dyn FnMut(usize)) -> Result<()> {
        let Pooling::Window(w) = self.pooling else { bail!("internal: pooling {} is not per position", self.pooling) };
        let mut row = vec![0.0; self.dim()];
        for &p in at {
            self.kmers.window(tokens, p, w, &mut row);
            out.extend_from_slice(&row);
        }
        progress(tokens.len());
        Ok(())
    }
}

/// Whether k-mer frequencies of sizes `ks` can be appended to backbone features pooled so.
pub fn check_with_kmers(ks: &[usize], pooling: Pooling) -> Result<()> {
    let most = ks.iter().copied().max().unwrap_or(1);
    match pooling {
        Pooling::Bins(_) => bail!("k-mer frequencies are appended to read means (--pool mean) or position windows (--pool window:W), not bins"),
        Pooling::Window(w) if w < most => {
            bail!("--with-kmers at position level: the window (--pool window:{w}) must hold the longest k-mer ({most} bases); e.g. --pool window:101")
        }
        _ => Ok(()),
    }
}

/// Backbone features with canonical k-mer frequencies appended (`train --with-kmers`), pooled
/// alike: read level over the record, position level over the same centred window (the
/// states averaged over it, the k-mers lying wholly inside it counted), so a per-base head
/// sees its neighbourhood. The k-mers read the model's tokens as bases.
pub struct WithKmers<F: Featurizer> {
    pub inner: F,
    kmers: Kmers,
    pooling: Pooling,
    /// Model token id -> Caduceus id (what `Kmers` reads).
    to_caduceus: [u8; 256],
}

impl<F: Featurizer> WithKmers<F> {
    pub fn new(inner: F, ks: &[usize], pooling: Pooling) -> Result<Self> {
        let kmers = Kmers::new(ks)?;
        check_with_kmers(ks, pooling)?;
        let cad = crate::model::vocab::caduceus();
        let mut to_caduceus = [cad.unk; 256];
        for (id, slot) in to_caduceus.iter_mut().enumerate() {
            if let Some(n) = inner.vocab().nucleotide(id as u8) {
                *slot = cad.acgt[n];
            }
        }
        Ok(WithKmers { inner, kmers, pooling, to_caduceus })
    }

    fn bases(&self, tokens: &[u8]) -> Vec<u8> {
        tokens.iter().map(|&t| self.to_caduceus[t as usize]).collect()
    }
}

impl<F: Featurizer> Featurizer for WithKmers<F> {
    fn vocab(&self) -> &Vocab {
        self.inner.vocab()
    }
    fn dim(&self) -> usize {
        self.inner.dim() + self.kmers.dim()
    }
    fn describe(&self) -> String {
        format!("{}, with k-mer frequencies (k = {:?})", self.inner.describe(), self.kmers.ks)
    }
    fn read(&mut self, tokens: &[u8], out: &mut Vec<f32>, progress: &mut dyn FnMut(usize)) -> Result<()> {
        self.inner.read(tokens, out, progress)?;
        let d = out.len();
        out.resize(d + self.kmers.dim(), 0.0);
        self.kmers.record(&self.bases(tokens), &mut out[d..]);
        Ok(())
    }
    fn batch_limit(&self) -> Option<usize> {
        self.inner.batch_limit()
    }
    fn batch_bases(&self) -> usize {
        self.inner.batch_bases()
    }
    fn read_batch(&mut self, records: &[&[u8]], out: &mut Vec<f32>) -> Result<()> {
        let mut rows = Vec::new();
        self.inner.read_batch(records, &mut rows)?;
        let d = self.inner.dim();
        let mut km = vec![0.0; self.kmers.dim()];
        for (r, row) in records.iter().zip(rows.chunks(d.max(1))) {
            out.extend_from_slice(row);
            self.kmers.record(&self.bases(r), &mut km);
            out.extend_from_slice(&km);
        }
        Ok(())
    }
    fn positions(&mut self, tokens: &[u8], emit: &mut dyn FnMut(usize, &[f32]) -> Result<()>, progress: &mut dyn FnMut(usize)) -> Result<()> {
        let Pooling::Window(w) = self.pooling else { bail!("internal: pooling {} is not per position", self.pooling) };
        let bases = self.bases(tokens);
        let (kmers, d) = (&self.kmers, self.inner.dim());
        let mut row = vec![0.0; d + kmers.dim()];
        self.inner.positions(
            tokens,
            &mut |p, x| {
                row[..d].copy_from_slice(x);
                kmers.window(&bases, p, w, &mut row[d..]);
                emit(p, &row)
            },
            progress,
        )
    }
    fn positions_at(&mut self, tokens: &[u8], at: &[usize], out: &mut Vec<f32>, progress: &mut dyn FnMut(usize)) -> Result<()> {
        let Pooling::Window(w) = self.pooling else { bail!("internal: pooling {} is not per position", self.pooling) };
        let mut rows = Vec::new();
        self.inner.positions_at(tokens, at, &mut rows, progress)?;
        let (bases, d) = (self.bases(tokens), self.inner.dim());
        let mut km = vec![0.0; self.kmers.dim()];
        for (&p, row) in at.iter().zip(rows.chunks(d.max(1))) {
            out.extend_from_slice(row);
            self.kmers.window(&bases, p, w, &mut km);
            out.extend_from_slice(&km);
        }
        Ok(())
    }
}

/// The `Features` document of a featurizer's output. `k`: the k-mer sizes of k-mer features,
/// or of the frequencies appended to backbone features (empty: none appended).
pub fn describe_features(source: Source, strand: &str, pooling: Pooling, k: &[usize], layers: &[usize], dim: usize) -> Features {
    Features {
        source,
        strand: if source == Source::Backbone { strand.to_string() } else { "both".to_string() },
        pooling,
        k: k.to_vec(),
        layers: if source == Source::Backbone { layers.to_vec() } else { Vec::new() },
        dim,
    }
}

/// Feature matrices are held in memory for the fit (and copied once more, standardized), so
/// their size is bounded before any feature is computed.
pub const MAX_FEATURE_BYTES: u128 = 1 << 30;

/// Refuse `rows` feature vectors pooled by `pooling` from rows of `width` values (backbone
/// hidden states, or k-mer frequencies) when they would take more than `MAX_FEATURE_BYTES`.
pub fn check_feature_size(rows: usize, width: usize, pooling: Pooling) -> Result<()> {
    // u128: bins:N takes any N, and N × width must not wrap
    let per_row = match pooling {
        Pooling::Bins(n) => n as u128 * width as u128,
        Pooling::Mean | Pooling::Window(_) => width as u128,
    } * 4;
    let total = per_row * rows as u128;
    if total <= MAX_FEATURE_BYTES {
        return Ok(());
    }
    let hint = match pooling {
        Pooling::Bins(_) => match MAX_FEATURE_BYTES / (width as u128 * 4 * rows as u128) {
            0 => "even bins:1 is too large: use fewer rows".to_string(),
            most => format!("use at most bins:{most} for these rows"),
        },
        _ => "use fewer rows (--max-positions at position level)".to_string(),
    };
    bail!(
        "--pool {pooling}: {rows} rows × {} features × 4 bytes = {:.1} GiB of features, over the limit of {} GiB (the fit holds them in memory); {hint}",
        per_row / 4,
        total as f64 / (1u64 << 30) as f64,
        MAX_FEATURE_BYTES >> 30
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_size_is_bounded_without_overflow() {
        assert!(check_feature_size(40, 256, Pooling::Bins(100)).is_ok());
        // 2^30 bytes exactly is allowed, one row more is not
        assert!(check_feature_size(1 << 20, 256, Pooling::Mean).is_ok());
        let e = check_feature_size((1 << 20) + 1, 256, Pooling::Mean).unwrap_err().to_string();
        assert!(e.contains("--max-positions"), "{e}");
        let e = check_feature_size(40, 24, Pooling::Bins(usize::MAX)).unwrap_err().to_string();
        assert!(e.contains("use at most bins:279620 "), "{e}");
        assert!(check_feature_size(0, usize::MAX, Pooling::Bins(usize::MAX)).is_ok());
    }
}
