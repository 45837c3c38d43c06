//! From tokens to per-position feature rows: strands, tiles, and the masked-LM head.
//!
//! A record is cut into tiles (`tiling`), each tile is run once per strand pass, and the
//! feature rows of its kept positions go to a `Sink` in ascending position order. Sinks that
//! only sum rows (pooling, windows) take each pass's rows with a weight as they come; the
//! others, and every sink of strand-joined log-probabilities (their join is not a weighted
//! sum), get finished rows, for which the first pass of a two-pass strand is held on the host
//! for one tile.

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::backend::Backend;
use crate::batch::{self, Policy};
use crate::model::forward::{Engine, PendingSums};
use crate::model::{lm_head, Model};
use crate::tiling::{self, Tile};
use crate::tokenizer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Strand {
    /// The model's raw final hidden state (2·d_model wide for PS).
    Fwd,
    /// The reverse strand's view in forward coordinates.
    Rc,
    /// Strand-averaged (Ph: post-hoc conjoining; PS: channel-half average); for logits, the
    /// log of the two strands' mean probability.
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Feature {
    /// Final normalized hidden states.
    Hidden,
    /// Masked-LM log-probabilities over A, C, G, T.
    Logits,
    /// The 16 raw masked-LM logits (only with --strand fwd).
    RawLogits,
}

/// How `Strand::Both` joins the two strands' A,C,G,T log-probabilities (Ph and causal
/// models, which run a pass per strand; a PS model's logits are one pass, already both strands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogProbJoin {
    /// log((p_fwd + p_rc) / 2): the mean of the two distributions, itself a distribution and
    /// reverse-complement invariant (what `embed --output logits` writes).
    MeanProb,
    /// (lp_fwd + lp_rc) / 2: differences of these rows are strand-averaged log-ratios (what
    /// `score-variants` scores); not a distribution.
    MeanLogProb,
}

/// log((e^a + e^b) / 2) without overflow or underflow.
fn log_mean_exp(a: f32, b: f32) -> f32 {
    let (a, b) = (a as f64, b as f64);
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    (m + (-(a - b).abs()).exp().ln_1p() - std::f64::consts::LN_2) as f32
}

/// Receives one record's feature rows in ascending position order.
pub trait Sink {
    /// Whether rows may arrive as weighted partial sums (one call per strand pass).
    fn linear(&self) -> bool;
    fn add(&mut self, pos: usize, row: &[f32], weight: f32) -> Result<()>;
    /// Every position below `upto` is complete.
    fn flush(&mut self, _upto: usize) -> Result<()> {
        Ok(())
    }
    /// Sinks that only sum hidden-state rows over position ranges (pooling, windows) say here
    /// which ranges of the complete positions `lo..hi` they need; the embedder then hands
    /// them the sums (`add_sum`, in the order given) instead of the rows, and a GPU backend
    /// takes those sums on the device instead of copying every row to the host.
    fn ranges(&mut self, _lo: usize, _hi: usize) -> Option<Vec<(usize, usize)>> {
        None
    }
    /// `weight` × the sum of feature rows over the `k`-th range of the last `ranges` call.
    fn add_sum(&mut self, _k: usize, _sum: &[f64], _weight: f64) -> Result<()> {
        anyhow::bail!("this sink takes rows, not range sums")
    }
}

/// Bases per packed context where records are batched (embed, classify, train, workers):
/// 131,072 keeps a packed context within the CUDA backend's cap for sharing in/out
/// projections between directions.
pub const PACK_BASES: usize = 131_072;

/// A range of one record in a batch: (record index, first position, end position).
pub type Query = (usize, usize, usize);

/// One (context, strand pass) run of `pass_sums` with its sums in flight.
struct PassRun<B: Backend> {
    /// The run's first query.
    q0: usize,
    pass: Pass,
    sums: PendingSums<B>,
    /// Values of all its queries' sums.
    len: usize,
}

/// The runs and sums of `query_sums_start`, for `query_sums_finish`.
pub struct PendingQuerySums<B: Backend> {
    runs: Vec<PassRun<B>>,
    queries: usize,
}

/// `out += w ×` the hidden-state feature (`--strand` view) of a sum of hidden rows `h`:
/// the feature is linear in the row, so sums map like rows. With several layers `h` and `out`
/// hold one segment per layer, each mapped alike.
fn add_hidden_feature(rcps: bool, strand: Strand, d: usize, h: &[f64], w: f64, out: &mut [f64]) {
    // one layer's hidden width, and its feature's (an RCPS strand view folds the halves)
    let hw = if rcps { 2 * d } else { d };
    let fw = if rcps && strand != Strand::Fwd { d } else { hw };
    if h.len() > hw {
        for (hs, os) in h.chunks(hw).zip(out.chunks_mut(fw)) {
            add_hidden_feature(rcps, strand, d, hs, w, os);
        }
        return;
    }
    match (rcps, strand) {
        (true, Strand::Rc) => out.iter_mut().enumerate().for_each(|(c, o)| *o += w * h[2 * d - 1 - c]),
        (true, Strand::Both) => out.iter_mut().enumerate().for_each(|(c, o)| *o += w * 0.5 * (h[c] + h[2 * d - 1 - c])),
        _ => out.iter_mut().zip(h).for_each(|(o, v)| *o += w * v),
    }
}

/// `--layers` as the engine lays them out: ascending, each once.
pub fn ascending_layers(layers: &[usize]) -> Vec<usize> {
    let mut l = layers.to_vec();
    l.sort_unstable();
    l.dedup();
    l
}

/// One run of the model over a tile: on the reverse complement or not, and its weight.
#[derive(Clone, Copy)]
struct Pass {
    rc: bool,
    weight: f32,
}

pub struct Embedder<B: Backend> {
    engine: Engine<B>,
    model: Arc<Model>,
    strand: Strand,
    feature: Feature,
    join: LogProbJoin,
    pub context: usize,
    pub overlap: usize,
}

impl<B: Backend> Embedder<B> {
    pub fn new(backend: B, model: Arc<Model>, strand: Strand, feature: Feature, context: usize, overlap: usize) -> Result<Self> {
        if feature == Feature::RawLogits && strand != Strand::Fwd {
            bail!("raw logits are only available with --strand fwd");
        }
        if context < tiling::MIN_CONTEXT {
            bail!("--context must be at least {}", tiling::MIN_CONTEXT);
        }
        let engine = Engine::new(backend, model.config.clone());
        Ok(Embedder { engine, model, strand, feature, join: LogProbJoin::MeanProb, context, overlap })
    }

    /// Switch what later records compute, keeping the loaded backend and its buffers.
    pub fn set_output(&mut self, strand: Strand, feature: Feature) -> Result<()> {
        if feature == Feature::RawLogits && strand != Strand::Fwd {
            bail!("raw logits are only available with --strand fwd");
        }
        self.strand = strand;
        self.feature = feature;
        Ok(())
    }

    /// How later records join the strands' log-probabilities under `Strand::Both`
    /// [default: `MeanProb`].
    pub fn set_log_prob_join(&mut self, join: LogProbJoin) {
        self.join = join;
    }

    /// Hidden states of layer `layer` instead of the final output (`Engine::set_layer`).
    pub fn set_layer(&mut self, layer: Option<usize>) -> Result<()> {
        self.set_layers(layer.as_slice())
    }

    /// Hidden states of several layers from one pass (`Engine::set_layers`): each row is the
    /// layers' feature rows side by side, `width()` = layers × the width of one.
    pub fn set_layers(&mut self, layers: &[usize]) -> Result<()> {
        if !layers.is_empty() && self.feature != Feature::Hidden {
            bail!("--layers gives hidden states: the masked-LM head reads the final layer only");
        }
        self.engine.set_layers(layers)
    }

    /// Layers side by side in a row (1 without `set_layers`).
    pub fn layers(&self) -> usize {
        self.engine.layers()
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn engine(&self) -> &Engine<B> {
        &self.engine
    }

    /// Width of the rows handed to sinks.
    pub fn width(&self) -> usize {
        let cfg = &self.model.config;
        match (self.feature, self.strand) {
            (Feature::Hidden, Strand::Fwd) => cfg.hidden_width() * self.layers(),
            (Feature::Hidden, _) => cfg.d_model * self.layers(),
            (Feature::Logits, _) => 4,
            (Feature::RawLogits, _) => cfg.vocab_padded(),
        }
    }

    fn passes(&self) -> Vec<Pass> {
        // PS needs one pass for every view (its second half is the reverse strand, and its
        // logits are exactly RC-equivariant); Ph and causal models run the reverse complement.
        match (self.model.config.rcps, self.strand) {
            (true, _) | (false, Strand::Fwd) => vec![Pass { rc: false, weight: 1.0 }],
            (false, Strand::Rc) => vec![Pass { rc: true, weight: 1.0 }],
            (false, Strand::Both) => vec![Pass { rc: false, weight: 0.5 }, Pass { rc: true, weight: 0.5 }],
        }
    }

    /// Whether the passes' feature rows are joined by something other than their weighted
    /// sum (then linear sinks cannot take them pass by pass either).
    fn joins_nonlinearly(&self, passes: &[Pass]) -> bool {
        passes.len() > 1 && self.feature == Feature::Logits && self.join == LogProbJoin::MeanProb
    }

    /// Fold pass `pass`'s feature row into `acc` (`first`: the first pass of this position):
    /// the weighted sum, or for `MeanProb` log-probabilities the log of the mean probability.
    fn join_pass(&self, nonlinear: bool, acc: &mut [f32], row: &[f32], pass: Pass, first: bool) {
        match (nonlinear, first) {
            (true, true) => acc.copy_from_slice(row),
            (true, false) => acc.iter_mut().zip(row).for_each(|(a, r)| *a = log_mean_exp(*a, *r)),
            (false, true) => acc.iter_mut().zip(row).for_each(|(a, r)| *a = pass.weight * r),
            (false, false) => acc.iter_mut().zip(row).for_each(|(a, r)| *a += pass.weight * r),
        }
    }

    /// Feature row of one final hidden row (`rc`: the row came from the reverse-complement
    /// pass); with several layers, of each layer's segment.
    fn feature_row(&self, hidden: &[f32], rc: bool, out: &mut [f32]) {
        let layers = self.layers();
        for (h, o) in hidden.chunks(hidden.len() / layers).zip(out.chunks_mut(out.len() / layers)) {
            self.feature_row_one(h, rc, o);
        }
    }

    fn feature_row_one(&self, hidden: &[f32], rc: bool, out: &mut [f32]) {
        let cfg = &self.model.config;
        let d = cfg.d_model;
        match self.feature {
            Feature::Hidden => match (cfg.rcps, self.strand) {
                (true, Strand::Rc) => out.iter_mut().zip(hidden[d..].iter().rev()).for_each(|(o, v)| *o = *v),
                (true, Strand::Both) => {
                    for (c, o) in out.iter_mut().enumerate() {
                        *o = 0.5 * (hidden[c] + hidden[2 * d - 1 - c]);
                    }
                }
                _ => out.copy_from_slice(hidden),
            },
            Feature::RawLogits => lm_head::logits(&self.model, hidden, out),
            Feature::Logits => {
                let lp = lm_head::row_acgt_log_probs(&self.model, hidden);
                // the reverse pass predicts the complementary base: A,C,G,T <- T,G,C,A
                let lp = if rc { [lp[3], lp[2], lp[1], lp[0]] } else { lp };
                out.copy_from_slice(&lp);
            }
        }
    }

    /// `out += w ×` the hidden-state feature of a sum of hidden rows `h` (linear in the row).
    fn add_hidden_feature(&self, h: &[f64], w: f64, out: &mut [f64]) {
        add_hidden_feature(self.model.config.rcps, self.strand, self.model.config.d_model, h, w, out)
    }

    /// Whether `pooled_packed` packs: the backend packs records into one context and the
    /// output is hidden states (pooling sums of them is linear).
    pub fn can_pack(&self) -> bool {
        self.engine.supports_packing() && self.feature == Feature::Hidden
    }

    /// For records that each fit one context: the sum over each record's positions of its
    /// feature rows, strands weighted as in `record` (what a `Mean` sink accumulates), with
    /// records packed into contexts of about `pack_bases` bases where the backend packs and
    /// the sums taken on the device. Needs `Feature::Hidden`.
    pub fn pooled_packed(&mut self, records: &[&[u8]], pack_bases: usize) -> Result<Vec<Vec<f64>>> {
        let pending = self.pooled_packed_start(records, pack_bases)?;
        self.query_sums_finish(pending)
    }

    /// `pooled_packed`, queued: the sums come from `query_sums_finish`.
    pub fn pooled_packed_start(&mut self, records: &[&[u8]], pack_bases: usize) -> Result<PendingQuerySums<B>> {
        let queries: Vec<Query> = records.iter().enumerate().map(|(i, r)| (i, 0, r.len())).collect();
        self.query_sums_start(records, &queries, pack_bases)
    }

    /// For records that each fit one context: the sum over positions `ranges[i]` (forward
    /// coordinates) of record `i`'s hidden-state feature rows, strands weighted as in
    /// `record`. Needs `Feature::Hidden`.
    pub fn range_sums(&mut self, records: &[&[u8]], ranges: &[(usize, usize)], pack_bases: usize) -> Result<Vec<Vec<f64>>> {
        if records.len() != ranges.len() {
            bail!("{} records but {} ranges", records.len(), ranges.len());
        }
        let queries: Vec<Query> = ranges.iter().enumerate().map(|(i, &(a, b))| (i, a, b)).collect();
        self.query_sums(records, &queries, pack_bases)
    }

    /// For records that each fit one context: for each query `(record, start, end)` (sorted
    /// by record; several per record allowed), the sum over positions `start..end` of that
    /// record's hidden-state feature rows, strands weighted as in `record`. Records are
    /// packed as in `range_sums`. Needs `Feature::Hidden`.
    pub fn query_sums(&mut self, records: &[&[u8]], queries: &[Query], pack_bases: usize) -> Result<Vec<Vec<f64>>> {
        let pending = self.query_sums_start(records, queries, pack_bases)?;
        self.query_sums_finish(pending)
    }

    /// `query_sums` in two steps: this one queues every run and its sums on the backend
    /// (they are taken before a later run overwrites the output) ...
    pub fn query_sums_start(&mut self, records: &[&[u8]], queries: &[Query], pack_bases: usize) -> Result<PendingQuerySums<B>> {
        if self.feature != Feature::Hidden {
            bail!("range sums are of hidden states, not logits");
        }
        let runs = self.pass_sums_start(records, queries, pack_bases)?;
        Ok(PendingQuerySums { runs, queries: queries.len() })
    }

    /// ... and this one waits for them, so the host can format one batch while the backend
    /// computes the next.
    pub fn query_sums_finish(&self, pending: PendingQuerySums<B>) -> Result<Vec<Vec<f64>>> {
        let (rcps, strand, d) = (self.model.config.rcps, self.strand, self.model.config.d_model);
        let mut sums = vec![vec![0.0f64; self.width()]; pending.queries];
        self.pass_sums_finish(pending.runs, |q, pass, h| add_hidden_feature(rcps, strand, d, h, pass.weight as f64, &mut sums[q]))?;
        Ok(sums)
    }

    /// For records that each fit one context: the feature row (as `record` computes it, strands
    /// combined) at position `at[i]` of record `i`, records packed as in `range_sums`.
    pub fn rows_at(&mut self, records: &[&[u8]], at: &[usize], pack_bases: usize) -> Result<Vec<Vec<f32>>> {
        if records.len() != at.len() {
            bail!("{} records but {} positions", records.len(), at.len());
        }
        let width = self.width();
        let queries: Vec<Query> = at.iter().enumerate().map(|(i, &p)| (i, p, p + 1)).collect();
        let mut hidden: Vec<Vec<(Pass, Vec<f32>)>> = vec![Vec::new(); records.len()];
        self.pass_sums(records, &queries, pack_bases, |q, pass, h| {
            // a sum over one row is that row; f32 -> f64 -> f32 is exact
            hidden[q].push((pass, h.iter().map(|&v| v as f32).collect()));
        })?;
        let mut row = vec![0.0; width];
        let nonlinear = self.joins_nonlinearly(&self.passes());
        Ok(hidden
            .iter()
            .map(|passes| {
                let mut o = vec![0.0f32; width];
                for (k, (pass, h)) in passes.iter().enumerate() {
                    self.feature_row(h, pass.rc, &mut row);
                    self.join_pass(nonlinear, &mut o, &row, *pass, k == 0);
                }
                o
            })
            .collect())
    }

    /// Runs every strand pass of `records` (each fitting one context) and hands `each` the
    /// index of a query and the f64 column sums of the final hidden rows over its range,
    /// taken in the pass's own coordinates (mirrored for the reverse complement). Where the
    /// backend packs, records go several to a context of about `pack_bases` bases (no padding:
    /// the conv and scan state restart at every record boundary) and the sums are taken on the
    /// device; elsewhere one record per run.
    fn pass_sums(&mut self, records: &[&[u8]], queries: &[Query], pack_bases: usize, each: impl FnMut(usize, Pass, &[f64])) -> Result<()> {
        let runs = self.pass_sums_start(records, queries, pack_bases)?;
        self.pass_sums_finish(runs, each)
    }

    /// `pass_sums` up to the queued sums of every (context, pass) run, in order.
    fn pass_sums_start(&mut self, records: &[&[u8]], queries: &[Query], pack_bases: usize) -> Result<Vec<PassRun<B>>> {
        if let Some(r) = records.iter().find(|r| r.is_empty() || r.len() > self.context) {
            bail!("a batched record must have 1 to {} bases (--context), not {}", self.context, r.len());
        }
        if let Some(q) = queries.iter().find(|&&(i, a, b)| i >= records.len() || a >= b || b > records[i].len()) {
            bail!("query {q:?} is empty or outside its record");
        }
        if queries.windows(2).any(|w| w[0].0 > w[1].0) {
            bail!("queries must be sorted by record");
        }
        let hw = self.engine.row_width();
        let pack = self.engine.supports_packing();
        let passes = self.passes();
        let mut q0 = 0;
        let mut tokens = Vec::new();
        let mut runs = Vec::new();
        let policy = if pack { Policy { limit: Some(self.context), max_bases: pack_bases } } else { Policy::ALONE };
        let lens: Vec<usize> = records.iter().map(|r| r.len()).collect();
        for (range, _) in batch::ranges(&lens, policy) {
            let (first, end) = (range.start, range.end);
            let group = &records[first..end];
            let q1 = q0 + queries[q0..].iter().take_while(|q| q.0 < end).count();
            let mut starts = Vec::with_capacity(group.len());
            let mut row = 0;
            for r in group {
                starts.push(row);
                row += r.len();
            }
            if q1 > q0 {
                for &pass in &passes {
                    tokens.clear();
                    for r in group {
                        if pass.rc {
                            // each record's reverse complement in its own slot
                            tokens.extend(tokenizer::reverse_complement(r, &self.model.weights.complement));
                        } else {
                            tokens.extend_from_slice(r);
                        }
                    }
                    let at: Vec<(usize, usize)> = queries[q0..q1]
                        .iter()
                        .map(|&(i, a, b)| {
                            let (s, n) = (starts[i - first], records[i].len());
                            if pass.rc { (s + n - b, s + n - a) } else { (s + a, s + b) }
                        })
                        .collect();
                    if group.len() == 1 {
                        self.engine.run(&tokens)?;
                    } else {
                        self.engine.run_packed(&tokens, &starts)?;
                    }
                    runs.push(PassRun { q0, pass, sums: self.engine.sum_rows_start(&at)?, len: (q1 - q0) * hw });
                }
            }
            q0 = q1;
        }
        Ok(runs)
    }

    /// Wait for the runs' sums and hand `each` every query's.
    fn pass_sums_finish(&self, runs: Vec<PassRun<B>>, mut each: impl FnMut(usize, Pass, &[f64])) -> Result<()> {
        let hw = self.engine.row_width();
        let mut sums = Vec::new();
        for run in runs {
            sums.resize(run.len, 0.0);
            self.engine.sum_rows_finish(run.sums, &mut sums)?;
            for (k, h) in sums.chunks(hw).enumerate() {
                each(run.q0 + k, run.pass, h);
            }
        }
        Ok(())
    }

    /// Run one context as it is, or its reverse complement (`rc`).
    fn run_pass(&mut self, ctx: &[u8], rc: bool) -> Result<()> {
        if rc {
            self.engine.run(&tokenizer::reverse_complement(ctx, &self.model.weights.complement))
        } else {
            self.engine.run(ctx)
        }
    }

    /// Run one tokenized record through every tile and pass into `sink`.
    /// `progress` is called with the number of bases finished so far.
    pub fn record(&mut self, tokens: &[u8], sink: &mut dyn Sink, progress: &mut dyn FnMut(usize)) -> Result<()> {
        let width = self.width();
        let hw = self.engine.row_width();
        let passes = self.passes();
        let nonlinear = self.joins_nonlinearly(&passes);
        let hold = passes.len() > 1 && (!sink.linear() || nonlinear);
        let mut held: Vec<f32> = Vec::new();
        let mut block = Vec::new();
        let mut row = vec![0.0; width];
        if self.engine.can_stream() && self.strand == Strand::Fwd {
            // a causal model sees only the past: one exact context, computed segment by segment
            let mut start = 0;
            while start < tokens.len() {
                let end = (start + self.context).min(tokens.len());
                self.engine.run_segment(&tokens[start..end], start == 0)?;
                let mut done = start;
                while done < end {
                    let nb = 4096.min(end - done);
                    block.resize(nb * hw, 0.0);
                    self.engine.read_rows(done - start, &mut block)?;
                    for (j, h) in block.chunks(hw).enumerate() {
                        self.feature_row(h, false, &mut row);
                        sink.add(done + j, &row, 1.0)?;
                    }
                    done += nb;
                }
                sink.flush(end)?;
                progress(end);
                start = end;
            }
            return Ok(());
        }
        let mut sums = Vec::new();
        let mut feat = Vec::new();
        for tile in tiling::plan(tokens.len(), self.context, self.overlap) {
            let Tile { start, end, keep_start, keep_end } = tile;
            let t = end - start;
            let kept = keep_end - keep_start;
            let ranges = if self.feature == Feature::Hidden { sink.ranges(keep_start, keep_end) } else { None };
            if let Some(ranges) = ranges {
                // sums over the sink's ranges, taken by the backend (on the device for a GPU);
                // a tile whose kept positions no range needs (gaps between windows) is not run
                for pass in passes.iter().filter(|_| !ranges.is_empty()) {
                    self.run_pass(&tokens[start..end], pass.rc)?;
                    let local: Vec<(usize, usize)> = ranges
                        .iter()
                        .map(|&(a, b)| if pass.rc { (end - b, end - a) } else { (a - start, b - start) })
                        .collect();
                    sums.resize(ranges.len() * hw, 0.0);
                    self.engine.sum_rows(&local, &mut sums)?;
                    for (k, h) in sums.chunks(hw).enumerate() {
                        feat.clear();
                        feat.resize(width, 0.0);
                        self.add_hidden_feature(h, 1.0, &mut feat);
                        sink.add_sum(k, &feat, pass.weight as f64)?;
                    }
                }
                sink.flush(keep_end)?;
                progress(keep_end);
                continue;
            }
            if hold {
                held.clear();
                held.resize(kept * width, 0.0);
            }
            for (pi, pass) in passes.iter().enumerate() {
                self.run_pass(&tokens[start..end], pass.rc)?;
                // kept positions in forward order; in the rc pass they sit at t-1-i
                const BLOCK: usize = 4096;
                let mut done = 0;
                while done < kept {
                    let nb = BLOCK.min(kept - done);
                    let i0 = keep_start - start + done;
                    let first = if pass.rc { t - (i0 + nb) } else { i0 };
                    block.resize(nb * hw, 0.0);
                    self.engine.read_rows(first, &mut block)?;
                    for j in 0..nb {
                        let src = if pass.rc { nb - 1 - j } else { j };
                        self.feature_row(&block[src * hw..(src + 1) * hw], pass.rc, &mut row);
                        let pos = keep_start + done + j;
                        if !hold {
                            sink.add(pos, &row, pass.weight)?;
                        } else {
                            let h = &mut held[(done + j) * width..][..width];
                            self.join_pass(nonlinear, h, &row, *pass, pi == 0);
                            if pi + 1 == passes.len() {
                                sink.add(pos, h, 1.0)?;
                            }
                        }
                    }
                    done += nb;
                }
            }
            sink.flush(keep_end)?;
            progress(keep_end);
        }
        Ok(())
    }
}
