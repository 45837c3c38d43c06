//! Command-line interface: flags shared by every command, model and backend selection,
//! and the record loop; one module per command.

mod classify;
mod embed;
mod faidx;
mod info;
mod score;
mod train;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::backend::{cpu::Cpu, Precision};
use crate::io::fastx::Reader;
use crate::model::vocab::Vocab;
use crate::model::Model;

pub use embed::{EmbedArgs, Format, Pool};
pub use info::InfoArgs;

#[derive(Parser, Debug)]
#[command(name = "dna-mamba", version, about = "Caduceus / Mamba DNA language models in a shell pipeline")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Embed FASTA/FASTQ records: pooled, windowed or per-position hidden states or logits.
    Embed(EmbedArgs),
    /// Describe a model: architecture, sizes, parameters, and what `embed` computes with it.
    Info(InfoArgs),
    /// Zero-shot scores for the SNVs of a VCF against an indexed reference.
    ScoreVariants(score::ScoreArgs),
    /// Index a FASTA file (.fai), as `samtools faidx` does.
    Faidx(faidx::FaidxArgs),
    /// Label reads (CSV) or every base (BED, bedGraph) with task heads; shipped heads by default.
    Classify(classify::ClassifyArgs),
    /// Fit a task head on frozen backbone features, score it on held-out data, and write it.
    Train(train::TrainArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Model folder with config.json + model.safetensors (Hugging Face layout) [default: the
    /// model built into the binary, see `dna-mamba info`].
    #[arg(short, long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Compute device: auto uses the first GPU when the CUDA driver, NVRTC and cuBLAS load,
    /// else the CPU (with one notice on stderr).
    #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda|cuda:N")]
    pub device: String,
    /// Arithmetic of the GPU's projections: f32 matches the CPU to ~1e-7; bf16 runs them on
    /// tensor cores (bf16 operands, f32 accumulation; residual, norms and scan stay f32),
    /// up to ~1.9x faster and ~2e-3 off. The CPU computes in f32 only.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// No progress bar, summary or warnings on stderr (errors still go there).
    #[arg(short, long)]
    pub quiet: bool,
    /// More logging on stderr: model, backend, contexts and per-record progress.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Skip records that cannot be read (empty, malformed) instead of stopping; each is named
    /// on stderr and counted in the summary.
    #[arg(long)]
    pub skip_bad: bool,
}

pub const DEFAULT_CONTEXT: usize = 131_072;

/// How records are cut into model contexts; shared by the commands that run the model.
#[derive(Args, Debug, Clone)]
pub struct Tiles {
    /// Bases per model context; longer records are tiled [default: the model's
    /// model_max_length, else 131072].
    #[arg(long)]
    pub context: Option<usize>,
    /// Overlap between tiles of a long record [default: context / 4]; each position's output
    /// comes from the tile where it is most central.
    #[arg(long)]
    pub overlap: Option<usize>,
    /// Positions per chunk inside a context (memory for intermediates, not results).
    #[arg(long, default_value_t = crate::backend::cpu::DEFAULT_CHUNK, hide = true)]
    pub chunk: usize,
}

impl Tiles {
    /// (context, overlap) for `model`, defaults applied.
    pub fn resolve(&self, model: &Model) -> (usize, usize) {
        let context = self.context.or(model.config.model_max_length).unwrap_or(DEFAULT_CONTEXT);
        (context, self.overlap.unwrap_or(context / 4))
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let common = match &cli.command {
        Command::Embed(a) => Some(&a.common),
        Command::Info(_) => None,
        Command::ScoreVariants(a) => Some(&a.common),
        Command::Faidx(_) => None,
        Command::Classify(a) => Some(&a.common),
        Command::Train(a) => Some(&a.common),
    };
    no_input_from_a_terminal(&cli.command)?;
    if let Some(n) = common.and_then(|c| c.threads) {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().ok();
    }
    match cli.command {
        Command::Embed(a) => embed::run(a),
        Command::Info(a) => info::run(a),
        Command::ScoreVariants(a) => score::run(a),
        Command::Faidx(a) => faidx::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Train(a) => train::run(a),
    }
}

/// How a value of a `--flag` enum is spelled on the command line, for messages (never the
/// Rust name of the variant).
pub fn flag_value<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// `embed` or `classify` with no input reads stdin; on a terminal that would wait for typed
/// records: print the usage instead and fail, as samtools does.
fn no_input_from_a_terminal(command: &Command) -> Result<()> {
    use std::io::IsTerminal;
    let (name, inputs) = match command {
        Command::Embed(a) => ("embed", &a.inputs),
        Command::Classify(a) => ("classify", &a.inputs),
        _ => return Ok(()),
    };
    if !inputs.iter().any(|i| i == "-") || !std::io::stdin().is_terminal() {
        return Ok(());
    }
    let mut cli = <Cli as clap::CommandFactory>::command();
    cli.build();
    if let Some(sub) = cli.find_subcommand_mut(name) {
        eprintln!("{}", sub.render_help());
    }
    bail!("{name}: no input file given and stdin is a terminal: name FASTA/FASTQ files, or pipe records in")
}

pub(crate) fn load_model(common: &Common) -> Result<Arc<Model>> {
    load_model_from(common.model.as_deref())
}

pub(crate) fn load_model_from(dir: Option<&std::path::Path>) -> Result<Arc<Model>> {
    let m = match dir {
        Some(dir) => Model::load(dir).with_context(|| format!("model {}", dir.display()))?,
        None => crate::model::default::load().context("the built-in default model")?,
    };
    Ok(Arc::new(m))
}

/// What the run accumulates for the summary line.
#[derive(Default)]
pub(crate) struct Totals {
    pub records: usize,
    pub bases: usize,
    pub unknown: usize,
    pub skipped: usize,
    /// Where the first [UNK] base was: `x.fa, record 'r3'`.
    pub first_unknown: Option<String>,
    /// Warnings about the inputs (a BGZF file without its EOF block), for the closing lines.
    pub warnings: Vec<String>,
}

impl Totals {
    /// Counts `n` [UNK] bases of the record that `at` names.
    pub fn count_unknown(&mut self, n: usize, at: impl FnOnce() -> String) {
        if n > 0 && self.first_unknown.is_none() {
            self.first_unknown = Some(at());
        }
        self.unknown += n;
    }

    /// The run's closing lines on stderr: warnings about the inputs, how many bases were [UNK],
    /// then `dna-mamba: <verb>N records (K skipped), B bases<what> in S s (R bases/s) on <on>`.
    pub fn report(&self, verb: &str, what: &str, secs: f64, on: &str) {
        for w in &self.warnings {
            eprintln!("warning: {w}");
        }
        if self.unknown > 0 {
            let first = self.first_unknown.as_deref().map(|f| format!(" (the first in {f})")).unwrap_or_default();
            eprintln!("warning: {} bases have no token in the model's vocabulary and were read as [UNK]{first}", self.unknown);
        }
        let skipped = if self.skipped > 0 { format!(" ({} skipped as unreadable)", self.skipped) } else { String::new() };
        eprintln!(
            "dna-mamba: {verb}{} records{skipped}, {} bases{what} in {secs:.2} s ({:.0} bases/s) on {on}",
            self.records,
            self.bases,
            self.bases as f64 / secs.max(1e-9)
        );
    }
}

/// What `--device` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    Auto,
    Cpu,
    Cuda(usize),
}

fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" => Ok(Device::Auto),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| anyhow!("--device {s}: expected auto, cpu, cuda or cuda:N")),
    }
}

/// The backend `--device` selects, as a value: a command matches on it once
/// (`with_backend!`), and the generic code it calls is compiled for each backend.
pub(crate) enum Selected {
    Cpu(Cpu),
    #[cfg(feature = "cuda")]
    Cuda(crate::backend::cuda::Cuda),
}

/// `with_backend!(selected, b => expr)`: `expr` with `b` bound to the selected backend.
macro_rules! with_backend {
    ($sel:expr, $b:ident => $body:expr) => {
        match $sel {
            $crate::cli::Selected::Cpu($b) => $body,
            #[cfg(feature = "cuda")]
            $crate::cli::Selected::Cuda($b) => $body,
        }
    };
}
pub(crate) use with_backend;

/// GPUs named by `--device cuda:all` or `cuda:0,2` (several devices), else None.
pub(crate) fn device_list(common: &Common) -> Result<Option<Vec<usize>>> {
    let Some(list) = common.device.strip_prefix("cuda:") else { return Ok(None) };
    if list == "all" {
        #[cfg(feature = "cuda")]
        return Ok(Some((0..crate::backend::cuda::available().context("--device cuda:all")?).collect()));
        #[cfg(not(feature = "cuda"))]
        bail!("--device cuda:all: this binary was built without the `cuda` feature");
    }
    if !list.contains(',') {
        return Ok(None);
    }
    let ids: Vec<usize> = list
        .split(',')
        .map(|n| n.trim().parse().map_err(|_| anyhow!("--device {}: expected cuda:N,M,...", common.device)))
        .collect::<Result<_>>()?;
    Ok(Some(ids))
}

/// Resolve `--device` (and `--precision`) to a backend for `model`.
pub(crate) fn select_backend(common: &Common, model: &Arc<Model>, chunk: usize) -> Result<Selected> {
    let device = parse_device(&common.device)?;
    let bf16 = common.precision == Precision::Bf16;
    if bf16 && device == Device::Cpu {
        bail!("--precision bf16 is for GPUs: the CPU backend computes in f32 (leave out --precision or use --device cuda)");
    }
    let cpu_note = if bf16 { "; running on the CPU in f32 (--precision bf16 applies to GPUs)" } else { "; running on the CPU" };
    #[cfg(feature = "cuda")]
    {
        use crate::backend::cuda;
        let ordinal = match device {
            Device::Cpu => None,
            Device::Cuda(n) => Some(n),
            Device::Auto => match cuda::available() {
                Ok(n) if n > 0 => Some(0),
                Ok(_) => None,
                Err(e) => {
                    if !common.quiet {
                        eprintln!("note: no usable GPU ({e:#}){cpu_note}");
                    }
                    None
                }
            },
        };
        if let Some(n) = ordinal {
            let gpu = cuda::Cuda::with_options(model.clone(), n, cuda::DEFAULT_CHUNK, common.precision)
                .with_context(|| format!("--device cuda:{n}"))?;
            return Ok(Selected::Cuda(gpu));
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        if let Device::Cuda(_) = device {
            bail!("--device cuda: this binary was built without the `cuda` feature");
        }
        if bf16 && !common.quiet {
            eprintln!("note: this binary was built without the `cuda` feature{cpu_note}");
        }
    }
    Ok(Selected::Cpu(Cpu::with_chunk(model.clone(), chunk)))
}

/// Open an indexed FASTA and check every requested region against it (before any output).
pub(crate) fn resolve_regions(
    fasta: &std::path::Path,
    regions: &[String],
    bed: Option<&std::path::Path>,
) -> Result<(crate::io::regions::IndexedFasta, Vec<crate::io::regions::Span>)> {
    use crate::io::regions::{parse_region, read_bed, IndexedFasta};
    let fa = IndexedFasta::open(fasta)?;
    let mut spans = Vec::new();
    let lengths = |n: &str| fa.length(n);
    for r in regions {
        spans.push(parse_region(r, &lengths).with_context(|| fa.name.clone())?);
    }
    if let Some(b) = bed {
        spans.extend(read_bed(b, &lengths)?);
    }
    Ok((fa, spans))
}

/// Regions of an indexed FASTA instead of whole records: `--region` texts and BED intervals,
/// in the order given. `f` gets the region's label, its tokens and its offset in the sequence.
pub(crate) fn for_each_region(
    fasta: &std::path::Path,
    regions: &[String],
    bed: Option<&std::path::Path>,
    vocab: &Vocab,
    totals: &mut Totals,
    tokens: &mut Vec<u8>,
    f: &mut dyn FnMut(&str, &[u8], usize) -> Result<()>,
) -> Result<()> {
    let (mut fa, spans) = resolve_regions(fasta, regions, bed)?;
    for span in spans {
        let seq = fa.fetch(&span.name, span.start, span.end)?;
        let label = span.label();
        totals.count_unknown(vocab.encode_into(&seq, tokens), || format!("{}, region {label}", fa.name));
        f(&label, tokens, span.start).with_context(|| format!("{}: region {label}", fa.name))?;
        totals.records += 1;
        totals.bases += tokens.len();
    }
    Ok(())
}

/// Read every record of every input, tokenize, and hand it on. A record that cannot be read
/// stops the run; with `skip_bad` a record whose extent the reader knows (a FASTQ quality line
/// of the wrong length, an empty sequence, a record cut off by the end of the file) is named on
/// stderr, counted, and passed over. Where the reader cannot find the next record (a malformed
/// line, a corrupt or truncated compressed stream, an unreadable file) the run stops even with
/// `skip_bad`, and the error says how many records were passed on and skipped before it: no
/// record is ever left unaccounted for with a successful exit.
pub(crate) fn for_each_record(
    inputs: &[String],
    skip_bad: bool,
    vocab: &Vocab,
    totals: &mut Totals,
    tokens: &mut Vec<u8>,
    f: &mut dyn FnMut(&str, &[u8]) -> Result<()>,
) -> Result<()> {
    let size: Option<u64> = inputs
        .iter()
        .map(|i| std::fs::metadata(i).ok().filter(|m| i != "-" && m.is_file()).map(|m| m.len()))
        .sum();
    crate::progress::input_started(size);
    // with --skip-bad an error that ends a file also ends the run: records after it are unknown
    let stop = |e: anyhow::Error, totals: &Totals| -> anyhow::Error {
        if !skip_bad {
            return e;
        }
        anyhow!(
            "{e:#} (--skip-bad cannot find the next record here; stopped after {} records passed on and {} skipped)",
            totals.records,
            totals.skipped
        )
    };
    let mut before = 0;
    for input in inputs {
        let mut reader = Reader::open(input).map_err(|e| stop(e, totals))?;
        while let Some(rec) = reader.next_record() {
            crate::progress::input_read(before + reader.bytes_read());
            let bad = match rec {
                Ok(r) if r.seq.is_empty() => format!("{}: record '{}' (line {}): empty sequence", reader.name(), r.id, r.line),
                Ok(rec) => {
                    totals.count_unknown(vocab.encode_into(&rec.seq, tokens), || format!("{}, record '{}'", reader.name(), rec.id));
                    f(&rec.id, tokens).with_context(|| format!("{}: record '{}'", reader.name(), rec.id))?;
                    totals.records += 1;
                    totals.bases += tokens.len();
                    continue;
                }
                Err(e) if e.skippable => e.to_string(),
                Err(e) => return Err(stop(e.into(), totals)),
            };
            if !skip_bad {
                return Err(anyhow!(bad));
            }
            eprintln!("skipped: {bad}");
            totals.skipped += 1;
        }
        if let Some(w) = reader.warning() {
            totals.warnings.push(format!("{}: {w}", reader.name()));
        }
        before += reader.bytes_read();
    }
    Ok(())
}
