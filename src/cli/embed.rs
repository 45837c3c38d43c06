//! `dna-mamba embed`: pooled, windowed or per-position states and log-probabilities.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};

use super::{flag_value, device_list, for_each_record, for_each_region, load_model, resolve_regions, select_backend, with_backend, Common, Totals, Tiles};
use crate::backend::Backend;
use crate::batch::{Batcher, Group, Policy};
use crate::embed::{ascending_layers, Embedder, Feature, PendingQuerySums, Strand};
use crate::model::vocab::Vocab;
use crate::model::Model;
use crate::output::csv::Csv;
use crate::output::npy::NpyDir;
use crate::output::rows::{PositionCsv, RawRows};
use crate::output::{safetensors as st, Output};
use crate::pool::{ReadPool, Windows};
use crate::progress::Progress;


/// Where the time of the packed path goes (`-v` prints it): queueing the model's work and
/// waiting for it, and formatting plus writing the rows; the rest is reading and tokenizing.
#[derive(Default)]
struct Phases {
    model: Duration,
    output: Duration,
}

/// A packed batch of short records whose sums are in flight.
struct InFlight<B: Backend> {
    records: Vec<(String, Vec<u8>)>,
    sums: PendingQuerySums<B>,
}

/// Packed groups of short records, pooled to their means: one group computes on the backend
/// while the one before it is formatted and written and the next one is read (on a GPU the
/// host's part would otherwise leave it idle ~15% of the time with 150-bp reads).
struct Packed<B: Backend> {
    in_flight: Option<InFlight<B>>,
    phases: Phases,
    verbose: bool,
}

impl<B: Backend> Packed<B> {
    /// Queue a group; write the one queued before it. A backend that computes in the call
    /// (the CPU) has its group written at once, so rows keep flowing out of a slow input.
    fn push<W: Write>(&mut self, records: Vec<(String, Vec<u8>)>, emb: &mut Embedder<B>, csv: &mut Csv<W>, progress: &mut Progress) -> Result<()> {
        let t0 = Instant::now();
        let toks: Vec<&[u8]> = records.iter().map(|(_, t)| t.as_slice()).collect();
        let sums = emb.pooled_packed_start(&toks, emb.engine().pack_bases()).with_context(|| batch_name(&records))?;
        self.phases.model += t0.elapsed();
        if let Some(before) = self.in_flight.replace(InFlight { records, sums }) {
            self.write(before, emb, csv, progress)?;
        }
        if !emb.engine().backend().queues() {
            self.drain(emb, csv, progress)?;
        }
        Ok(())
    }

    /// Write the group in flight, if any (before a long record's rows, and at the end).
    fn drain<W: Write>(&mut self, emb: &mut Embedder<B>, csv: &mut Csv<W>, progress: &mut Progress) -> Result<()> {
        match self.in_flight.take() {
            Some(f) => self.write(f, emb, csv, progress),
            None => Ok(()),
        }
    }

    fn write<W: Write>(&mut self, f: InFlight<B>, emb: &Embedder<B>, csv: &mut Csv<W>, progress: &mut Progress) -> Result<()> {
        let t0 = Instant::now();
        let sums = emb.query_sums_finish(f.sums).with_context(|| batch_name(&f.records))?;
        let t1 = Instant::now();
        let records = f.records;
        let means: Vec<Vec<f32>> = records.iter().zip(&sums).map(|((_, toks), sum)| ReadPool::mean_of(sum, toks.len())).collect();
        let rows: Vec<(&str, usize, &[f32])> = records.iter().zip(&means).map(|((id, toks), m)| (id.as_str(), toks.len(), m.as_slice())).collect();
        csv.rows(&rows)?;
        self.phases.model += t1 - t0;
        self.phases.output += t1.elapsed();
        for (id, toks) in &records {
            progress.record_done(toks.len());
            if self.verbose {
                progress.warn(&format!("done: {id} ({} bases, packed)", toks.len()));
            }
        }
        Ok(())
    }
}

fn batch_name(records: &[(String, Vec<u8>)]) -> String {
    format!("a packed batch of {} records ('{}' to '{}')", records.len(), records[0].0, records[records.len() - 1].0)
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Mean over all positions: one row per record.
    Mean,
    /// Every position, streamed as it is computed.
    None,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Npy,
    Safetensors,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// FASTA/FASTQ files, plain or compressed; `-` is stdin.
    #[arg(default_value = "-")]
    pub inputs: Vec<String>,
    #[command(flatten)]
    pub common: Common,
    /// Output file (`-` = stdout); a folder for --format npy. Written only on success.
    #[arg(short = 'o', long = "out", value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Which strand's view: the model's raw output, the reverse strand, or their average.
    #[arg(long, value_enum, default_value = "both")]
    pub strand: Strand,
    /// What to write per position.
    #[arg(long, value_enum, default_value = "hidden")]
    pub output: Feature,
    /// Pooling over positions.
    #[arg(long, value_enum, default_value = "mean")]
    pub pool: Pool,
    /// Means over windows of W bases (rows id,start,end,...; 0-based, half-open).
    #[arg(long, value_name = "W")]
    pub window: Option<usize>,
    /// Step between window starts (default: the window, i.e. no overlap).
    #[arg(long, value_name = "S", requires = "window")]
    pub stride: Option<usize>,
    /// Output format for --pool none.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
    /// Hidden states of these layers instead of the final normalized output: 0 = the embedding
    /// output, i = the residual stream after block i, not normalized (for RCPS models, halves
    /// as the final norm would read them). Several (`--layers 4,8`) come from one pass, in
    /// ascending order: CSV columns `l4.e0 ..`, one npy file / safetensors tensor per layer
    /// (`ID.l4`).
    #[arg(long, value_name = "L", value_delimiter = ',')]
    pub layers: Vec<usize>,
    #[command(flatten)]
    pub tiles: Tiles,
    /// Records embedded side by side by this many workers, each with its own backend (pooled
    /// `--pool mean` CSV output); `--device cuda:all` or `cuda:0,2` runs one worker per GPU.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Only this region of an indexed FASTA (samtools syntax: chr, chr:beg-end, 1-based
    /// inclusive, commas allowed, open end `chr:beg-`); repeatable. Output coordinates are the
    /// genome's; ids are `chr:beg-end`.
    #[arg(short = 'r', long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
    /// Regions from a BED file (0-based, half-open) of the indexed FASTA.
    #[arg(long = "regions", value_name = "BED")]
    pub regions_bed: Option<PathBuf>,
}

/// Records of the inputs, or the requested regions of one indexed FASTA, with their offsets.
fn each_input(a: &EmbedArgs, vocab: &Vocab, totals: &mut Totals, tokens: &mut Vec<u8>, f: &mut dyn FnMut(&str, &[u8], usize) -> Result<()>) -> Result<()> {
    if a.regions.is_empty() && a.regions_bed.is_none() {
        return for_each_record(&a.inputs, a.common.skip_bad, vocab, totals, tokens, &mut |id, t| f(id, t, 0));
    }
    let [fasta] = a.inputs.as_slice() else {
        bail!("--region/--regions need exactly one input: an indexed FASTA file");
    };
    if fasta == "-" {
        bail!("--region/--regions need an indexed FASTA file, not stdin");
    }
    for_each_region(Path::new(fasta), &a.regions, a.regions_bed.as_deref(), vocab, totals, tokens, f)
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let model = load_model(&a.common)?;
    let gpus = device_list(&a.common)?;
    if gpus.as_ref().is_some_and(|g| g.len() > 1) || a.workers > 1 {
        return run_workers(&a, model, gpus);
    }
    with_backend!(select_backend(&a.common, &model, a.tiles.chunk)?, b => embed_on(b, model.clone(), &a))
}

fn value_names(feature: Feature, width: usize) -> Vec<String> {
    match feature {
        Feature::Hidden => (0..width).map(|i| format!("e{i}")).collect(),
        Feature::Logits => ["lp_A", "lp_C", "lp_G", "lp_T"].map(String::from).to_vec(),
        Feature::RawLogits => (0..width).map(|i| format!("logit_{i}")).collect(),
    }
}

/// Column block `k` (`part` values wide) of the `width`-wide f32 rows in `held` (native-endian
/// bytes, as `RawRows` wrote them), written in the same form.
fn write_part(held: &[u8], width: usize, part: usize, k: usize, w: &mut dyn Write) -> Result<()> {
    for row in held.chunks(width * 4) {
        w.write_all(&row[k * part * 4..(k + 1) * part * 4])?;
    }
    Ok(())
}

fn embed_on<B: Backend>(backend: B, model: Arc<Model>, a: &EmbedArgs) -> Result<()> {
    let (context, overlap) = a.tiles.resolve(&model);
    if overlap >= context {
        bail!("--overlap ({overlap}) must be smaller than --context ({context})");
    }
    if a.output != Feature::Hidden && a.pool != Pool::None {
        bail!("--output {} needs --pool none (log-probabilities are per position)", flag_value(&a.output));
    }
    if a.window.is_some() && a.pool == Pool::None {
        bail!("--window and --pool none exclude each other");
    }
    if a.window == Some(0) || a.stride == Some(0) {
        bail!("--window and --stride must be positive");
    }
    if a.format != Format::Csv && (a.pool != Pool::None || a.window.is_some()) {
        bail!("--format {} is for per-position output (--pool none)", flag_value(&a.format));
    }
    // a missing input or a bad region should fail before anything is written
    if !a.regions.is_empty() || a.regions_bed.is_some() {
        if let [fasta] = a.inputs.as_slice() {
            resolve_regions(Path::new(fasta), &a.regions, a.regions_bed.as_deref())?;
        }
    }
    for input in &a.inputs {
        if input != "-" {
            std::fs::metadata(input).with_context(|| input.clone())?;
        }
    }
    let name = backend.name();
    if a.common.verbose {
        eprintln!("model: {} ({})", model.source.display(), model.config.describe());
        eprintln!("backend: {name}; context {context}, tile overlap {overlap}; strand {}, output {}", flag_value(&a.strand), flag_value(&a.output));
    }
    let mut emb = Embedder::new(backend, model.clone(), a.strand, a.output, context, overlap)?;
    let layers = ascending_layers(&a.layers);
    emb.set_layers(&layers)?;
    let width = emb.width();
    // one layer's width, and the layers a row holds side by side (1 without --layers)
    let parts = layers.len().max(1);
    let part = width / parts;
    let cols = if layers.len() > 1 {
        layers.iter().flat_map(|l| value_names(a.output, part).into_iter().map(move |c| format!("l{l}.{c}"))).collect()
    } else {
        value_names(a.output, width)
    };
    // npy / safetensors names: the record id, and with several layers `ID.lL` per layer
    let names = |id: &str| -> Vec<String> {
        if layers.len() > 1 { layers.iter().map(|l| format!("{id}.l{l}")).collect() } else { vec![id.to_string()] }
    };
    let mut progress = Progress::new(a.common.quiet);
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut tokens = Vec::new();

    match a.format {
        Format::Csv => {
            let mut csv = Csv::new(Output::open(a.out.as_deref(), &a.inputs)?);
            let lead: &[&str] = match (a.pool, a.window) {
                (Pool::None, _) => &["id", "pos"],
                (_, Some(_)) => &["id", "start", "end"],
                _ => &["id", "length"],
            };
            csv.header(lead, &cols)?;
            // pooled means of short records: packed several to a context where the backend can
            let pack = a.pool == Pool::Mean && a.window.is_none() && emb.can_pack();
            let policy = if pack { Policy { limit: Some(emb.context), max_bases: emb.engine().pack_bases() } } else { Policy::ALONE };
            let mut batcher = Batcher::new(policy);
            let mut packed = Packed { in_flight: None, phases: Phases::default(), verbose: a.common.verbose };
            let read = each_input(a, &model.vocab, &mut totals, &mut tokens, &mut |id, toks, offset| {
                // (push hands on no lone record here: those are run below, from the reader's buffer)
                let mut emit = |g: Group<(String, Vec<u8>)>| packed.push(g.into_records(), &mut emb, &mut csv, &mut progress);
                if batcher.packs(toks.len()) {
                    return batcher.push((id.to_string(), toks.to_vec()), toks.len(), &mut emit);
                }
                // a long record: the pending short ones go first, to keep the input order
                batcher.flush(&mut emit)?;
                packed.drain(&mut emb, &mut csv, &mut progress)?;
                let mut bar = |n: usize| progress.bases(n);
                match (a.pool, a.window) {
                    (Pool::None, _) => emb.record(toks, &mut PositionCsv { out: &mut csv, id, offset }, &mut bar)?,
                    (_, Some(w)) => {
                        let mut s = Windows::new(&mut csv, id, toks.len(), w, a.stride.unwrap_or(w), width, offset);
                        emb.record(toks, &mut s, &mut bar)?;
                    }
                    _ => {
                        let mut m = ReadPool::mean(toks.len(), width);
                        emb.record(toks, &mut m, &mut bar)?;
                        csv.row(id, &[toks.len()], m.features())?;
                    }
                }
                progress.record_done(toks.len());
                if a.common.verbose {
                    progress.warn(&format!("done: {id} ({} bases)", toks.len()));
                }
                Ok(())
            });
            // records read before an input error are still computed and written
            let flushed = batcher
                .flush(&mut |g| packed.push(g.into_records(), &mut emb, &mut csv, &mut progress))
                .and_then(|_| packed.drain(&mut emb, &mut csv, &mut progress));
            if a.common.verbose && packed.phases.model > Duration::ZERO {
                let all = started.elapsed().as_secs_f64();
                let (m, o) = (packed.phases.model.as_secs_f64(), packed.phases.output.as_secs_f64());
                progress.warn(&format!("time in packed batches: model {m:.2} s, output {o:.2} s, the rest (reading, tokenizing) {:.2} s", all - m - o));
            }
            read?;
            flushed?;
            if totals.records == 0 && !a.common.quiet {
                progress.warn("warning: the input has no records; wrote a header only");
            }
            csv.into_inner()?.finish()?;
        }
        Format::Npy => {
            let dir = a.out.as_ref().ok_or_else(|| anyhow!("--format npy needs -o DIR (a folder for one .npy per record)"))?;
            let mut npy = NpyDir::create(dir)?;
            each_input(a, &model.vocab, &mut totals, &mut tokens, &mut |id, toks, _| {
                if parts == 1 {
                    npy.record(id, toks.len(), width, |w| emb.record(toks, &mut RawRows { out: w }, &mut |n| progress.bases(n)))?;
                } else {
                    // one pass, held for the record, then a file per layer
                    let mut held = Vec::new();
                    emb.record(toks, &mut RawRows { out: &mut held }, &mut |n| progress.bases(n))?;
                    for (k, name) in names(id).iter().enumerate() {
                        npy.record(name, toks.len(), part, |w| write_part(&held, width, part, k, w))?;
                    }
                }
                progress.record_done(toks.len());
                Ok(())
            })?;
            npy.commit()?;
        }
        Format::Safetensors => {
            let path = st::check_path(a.out.as_deref())?;
            // read everything first: the header lists every tensor's shape
            let mut records: Vec<(String, Vec<u8>)> = Vec::new();
            let mut seen = HashSet::new();
            each_input(a, &model.vocab, &mut totals, &mut tokens, &mut |id, toks, _| {
                for name in names(id) {
                    st::check_name(&name)?;
                    if !seen.insert(name.clone()) {
                        if name == id {
                            bail!("duplicate record id '{id}' (safetensors output needs unique ids)");
                        }
                        bail!("duplicate record id '{id}' (safetensors output needs unique ids, and with several layers unique ID.lL tensor names: '{name}' is taken)");
                    }
                }
                records.push((id.to_string(), toks.to_vec()));
                Ok(())
            })?;
            let shapes: Vec<(String, [usize; 2])> =
                records.iter().flat_map(|(id, t)| names(id).into_iter().map(move |n| (n, [t.len(), part]))).collect();
            let mut f = Output::open(Some(path), &a.inputs)?;
            let meta = [("producer", format!("dna-mamba {}", env!("CARGO_PKG_VERSION"))), ("strand", flag_value(&a.strand)), ("output", flag_value(&a.output))];
            st::write_header(&mut f, &shapes, &meta)?;
            for (_, toks) in &records {
                if parts == 1 {
                    emb.record(toks, &mut RawRows { out: &mut f }, &mut |n| progress.bases(n))?;
                } else {
                    let mut held = Vec::new();
                    emb.record(toks, &mut RawRows { out: &mut held }, &mut |n| progress.bases(n))?;
                    for k in 0..parts {
                        write_part(&held, width, part, k, &mut f)?;
                    }
                }
                progress.record_done(toks.len());
            }
            f.finish()?;
        }
    }
    progress.finish();
    if !a.common.quiet {
        totals.report("", "", started.elapsed().as_secs_f64(), &name);
    }
    Ok(())
}


/// Pooled output from several workers: one per GPU of `gpus`, or `--workers` on the CPU.
fn run_workers(a: &EmbedArgs, model: Arc<Model>, gpus: Option<Vec<usize>>) -> Result<()> {
    if a.pool != Pool::Mean || a.window.is_some() || a.format != Format::Csv || a.output != Feature::Hidden {
        bail!("several workers or GPUs produce pooled output only (--pool mean, CSV, no --window) for now");
    }
    if !a.layers.is_empty() {
        bail!("--layers runs with one worker for now");
    }
    let (context, overlap) = a.tiles.resolve(&model);
    if overlap >= context {
        bail!("--overlap ({overlap}) must be smaller than --context ({context})");
    }
    match gpus {
        #[cfg(feature = "cuda")]
        Some(gpus) => {
            use crate::backend::cuda::{self, Cuda};
            let (precision, chunk) = (a.common.precision, cuda::DEFAULT_CHUNK);
            let make = |w: usize| -> Result<Cuda> {
                Cuda::with_options(model.clone(), gpus[w], chunk, precision).with_context(|| format!("--device cuda:{}", gpus[w]))
            };
            let name = format!("{} GPU workers ({})", gpus.len(), a.common.device);
            workers_on(&make, gpus.len(), &name, &model, a, context, overlap, crate::embed::PACK_BASES)
        }
        #[cfg(not(feature = "cuda"))]
        Some(_) => bail!("--device {}: this binary was built without the `cuda` feature", a.common.device),
        None => {
            if a.common.device.starts_with("cuda") {
                bail!("--workers with --device {}: name several GPUs (cuda:0,1 or cuda:all) instead", a.common.device);
            }
            let chunk = a.tiles.chunk;
            let make = |_: usize| -> Result<crate::backend::cpu::Cpu> { Ok(crate::backend::cpu::Cpu::with_chunk(model.clone(), chunk)) };
            // the CPU runs packed batches one record at a time: one record per job spreads best
            workers_on(&make, a.workers, &format!("cpu, {} workers", a.workers), &model, a, context, overlap, 0)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn workers_on<B: Backend>(
    make: &(dyn Fn(usize) -> Result<B> + Sync),
    n: usize,
    name: &str,
    model: &Arc<Model>,
    a: &EmbedArgs,
    context: usize,
    overlap: usize,
    pack_bases: usize,
) -> Result<()> {
    let width = if a.strand == Strand::Fwd { model.config.hidden_width() } else { model.config.d_model };
    let mut csv = Csv::new(Output::open(a.out.as_deref(), &a.inputs)?);
    csv.header(&["id", "length"], &value_names(Feature::Hidden, width))?;
    let mut progress = Progress::new(a.common.quiet);
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut tokens = Vec::new();
    crate::parallel::pooled_means(
        make,
        n,
        model,
        a.strand,
        context,
        overlap,
        pack_bases,
        &mut |send| each_input(a, &model.vocab, &mut totals, &mut tokens, &mut |id, toks, _| send(id, toks)),
        &mut |id, len, row| {
            progress.record_done(len);
            csv.row(id, &[len], row.iter().copied())
        },
    )?;
    if totals.records == 0 && !a.common.quiet {
        progress.warn("warning: the input has no records; wrote a header only");
    }
    csv.into_inner()?.finish()?;
    progress.finish();
    if !a.common.quiet {
        totals.report("", "", started.elapsed().as_secs_f64(), name);
    }
    Ok(())
}
