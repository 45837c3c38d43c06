//! The labelled data of `train`, before any features: records with their labels (read level),
//! or genome stretches with per-base labels and sampled positions (position level), split
//! into training and held-out parts. Data and labels are checked here, before any model work,
//! so that a bad label file fails before the features are computed.

mod genome;
mod reads;

use anyhow::{anyhow, Context, Result};

use super::TrainArgs;
use crate::heads::{Level, Source};
use crate::model::vocab::Vocab;

/// One labelled record (read level).
pub(super) struct Rec {
    pub(super) id: String,
    pub(super) tokens: Vec<u8>,
    pub(super) label: String,
}

/// A genome stretch and the positions sampled in it (position level).
pub(super) struct Stretch {
    pub(super) chrom: usize,
    pub(super) start: usize,
    pub(super) end: usize,
    /// Sampled positions, relative to `start`, ascending.
    pub(super) at: Vec<usize>,
}

/// The labelled data of one split, before features.
pub(super) enum Split {
    Reads(Vec<Rec>),
    Genome(Vec<Stretch>),
}

impl Split {
    pub(super) fn rows(&self) -> usize {
        match self {
            Split::Reads(r) => r.len(),
            Split::Genome(s) => s.iter().map(|s| s.at.len()).sum(),
        }
    }
    pub(super) fn bases(&self) -> usize {
        match self {
            Split::Reads(r) => r.iter().map(|r| r.tokens.len()).sum(),
            Split::Genome(s) => s.iter().map(|s| s.end - s.start).sum(),
        }
    }
}

/// Sequences of the genome(s) with per-base label indices.
pub(super) struct Genome {
    pub(super) ids: Vec<String>,
    pub(super) tokens: Vec<Vec<u8>>,
    pub(super) labels: Vec<Vec<u8>>,
}

pub(super) struct Data {
    pub(super) label_names: Vec<String>,
    pub(super) train: Split,
    pub(super) test: Split,
    pub(super) genome: Option<Genome>,
    /// Free-form description for the head's card.
    pub(super) about: serde_json::Value,
}

/// Read and split the data of `a.level`.
pub(super) fn assemble(a: &TrainArgs, vocab: &Vocab) -> Result<Data> {
    match a.level {
        Level::Read => reads::assemble(a, vocab),
        Level::Position => genome::assemble(a, vocab),
    }
}

/// The token ids of the data: the backbone's (its folder's tokenizer.json) or, for k-mer
/// features, the Caduceus ids `kmer` reads. Known before any data is read, so that records
/// are tokenized once, as the model reads them.
pub(super) fn data_vocab(a: &TrainArgs) -> Result<Vocab> {
    match (a.features, &a.common.model) {
        (Source::Backbone, Some(dir)) => {
            let dir = crate::model::hub::resolve(dir).with_context(|| format!("model {}", dir.display()))?;
            Ok(Vocab::load(&dir).map_err(|e| anyhow!("model {}: {e}", dir.display()))?.unwrap_or_else(crate::model::vocab::caduceus))
        }
        _ => Ok(crate::model::vocab::caduceus()),
    }
}
