//! The arguments of `dna-mamba train`.

use std::path::PathBuf;

use clap::Args;

use crate::cli::{Common, Tiles};
use crate::embed::Strand;
use crate::heads::{Kind, Level, Source};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Labelled records (read level) or the genome (position level): FASTA/FASTQ, plain or
    /// compressed; `-` is stdin.
    #[arg(required_unless_present = "load_features")]
    pub inputs: Vec<String>,
    #[command(flatten)]
    pub common: Common,
    /// One label per record (`read`) or one per base (`position`).
    #[arg(long, value_enum)]
    pub level: Level,
    /// Where to write the head (a .safetensors file; written only on success).
    #[arg(short = 'o', long = "out", value_name = "HEAD")]
    pub out: PathBuf,
    /// Task name stored in the head (and used in column names) [default: the output file's stem].
    #[arg(long)]
    pub task: Option<String>,

    /// Read level: a CSV/TSV of `id,label` rows [default: a `label=NAME` field in each header].
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Position level: labelled intervals as BED (label = the name column, or --label).
    #[arg(long, value_name = "FILE", conflicts_with = "gff")]
    pub bed: Option<PathBuf>,
    /// Position level: labelled intervals as GFF3 (label = the feature type, or --label).
    #[arg(long, value_name = "FILE")]
    pub gff: Option<PathBuf>,
    /// Position level, GFF3: the feature types to use (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "CDS")]
    pub types: Vec<String>,
    /// Position level: give every interval this label instead of its name or type.
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
    /// Position level: the label of bases outside every interval.
    #[arg(long, default_value = "other", value_name = "NAME")]
    pub background: String,

    /// Held-out data, labelled like the inputs: records (read level) or genome sequences
    /// (position level, labelled from the same BED/GFF). Without it a part of the inputs is held out.
    #[arg(long, value_name = "FILE")]
    pub test: Vec<String>,
    /// Without --test: the fraction held out, of records (stratified by label) or of genome
    /// stretches. Also the held-out share of --max-bases.
    #[arg(long, default_value_t = 0.2, value_name = "F")]
    pub test_fraction: f64,
    /// Position level: hold out these whole sequences (comma-separated ids) instead of a
    /// random fraction of stretches.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub test_chroms: Vec<String>,
    /// Position level: bases per genome stretch. Train and test stretches never overlap and
    /// each is run through the model on its own.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub stretch: usize,
    /// Position level: at most this many genome bases are run through the model (stretches
    /// sampled at random, train and test together).
    #[arg(long, default_value_t = 2_000_000, value_name = "N")]
    pub max_bases: usize,
    /// Position level: at most this many positions (sampled at random) in each of the
    /// training and the held-out set.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_positions: usize,

    /// Feature source: the backbone's hidden states, or canonical k-mer frequencies (the
    /// baseline; needs no model).
    #[arg(long, value_enum, default_value = "backbone")]
    pub features: Source,
    /// k-mer sizes for --features kmer and --with-kmers (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "4,5,6")]
    pub k: Vec<usize>,
    /// Backbone features followed by the canonical k-mer frequencies of --k, pooled alike
    /// (position level: over the same window, which must hold the longest k-mer).
    #[arg(long)]
    pub with_kmers: bool,
    /// Backbone features from these layers instead of the final normalized output, side by
    /// side (see `embed --layers`; one pass, ascending order); recorded in the head, which
    /// `classify` then reads the same way.
    #[arg(long, value_name = "L", value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// Which strand's view of the backbone (see `embed --strand`).
    #[arg(long, value_enum, default_value = "both")]
    pub strand: Strand,
    /// Pooling: `mean` or `bins:N` (read level: means over N equal segments, concatenated);
    /// `none` or `window:W` (position level: mean over a centred window of odd W bases)
    /// [default: mean / none; window:101 for k-mer features and --with-kmers at position level].
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,

    /// Read level: the precision the calls must reach on the held-out split; the lowest top
    /// probability that gets there is stored in the head, and `classify` calls records below
    /// it `unassigned` (0: no threshold, every record gets its most probable label).
    #[arg(long, value_name = "P", default_value_t = 0.9)]
    pub call_precision: f64,

    /// Head: linear softmax, or one ReLU hidden layer.
    #[arg(long, value_enum, default_value = "linear")]
    pub kind: Kind,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// L2 penalty of the linear head [default: chosen on an inner validation split].
    #[arg(long)]
    pub l2: Option<f64>,
    /// Weight classes equally in the loss (for unbalanced labels).
    #[arg(long)]
    pub balanced: bool,
    /// Seed for splits, sampling and initialisation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the held-out predictions as CSV.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
    /// Also save the feature matrices and labels of both splits (safetensors), to fit other
    /// heads on them with --load-features.
    #[arg(long, value_name = "FILE")]
    pub save_features: Option<PathBuf>,
    /// Fit on features saved by --save-features instead of computing them (no inputs, labels
    /// or model needed; the head records the backbone they came from).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["labels", "bed", "gff", "test", "save_features"])]
    pub load_features: Option<PathBuf>,

    #[command(flatten)]
    pub tiles: Tiles,
}
