//! Features of both splits: the backbone's hidden states (optionally with k-mer frequencies
//! appended) or k-mer frequencies alone, one row per record or sampled position.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::dataset::{self, Data, Split};
use super::TrainArgs;
use crate::backend::Backend;
use crate::batch::{self, Policy};
use crate::cli::{load_model, select_backend, with_backend};
use crate::embed::{ascending_layers, Embedder, Feature};
use crate::heads::features::{check_feature_size, describe_features, BackboneFeatures, Featurizer, KmerFeatures, WithKmers};
use crate::heads::{self, Pooling, Source};
use crate::model::Model;
use crate::progress::Progress;

/// Features and label indices of one split.
#[derive(Default)]
pub(super) struct Matrix {
    pub(super) x: Vec<f32>,
    pub(super) y: Vec<u32>,
    /// Row names for --predictions: (id, position or None).
    pub(super) names: Vec<(String, Option<usize>)>,
}

/// Labelled features of both splits and where they came from.
pub(super) struct Prepared {
    pub(super) label_names: Vec<String>,
    pub(super) about: serde_json::Value,
    pub(super) train: Matrix,
    pub(super) test: Matrix,
    pub(super) features: heads::Features,
    pub(super) backbone: Option<heads::Backbone>,
    pub(super) context: Option<usize>,
    pub(super) backend: String,
}

/// Read the data and labels, then compute the features (on the backbone or as k-mers).
pub(super) fn compute(a: &TrainArgs, pooling: Pooling) -> Result<Prepared> {
    let vocab = dataset::data_vocab(a)?;
    let data = dataset::assemble(a, &vocab)?;
    if !a.common.quiet {
        eprintln!(
            "train: {} labels ({}); {} training rows ({} bases), {} held out ({} bases)",
            data.label_names.len(),
            data.label_names.join(", "),
            data.train.rows(),
            data.train.bases(),
            data.test.rows(),
            data.test.bases()
        );
    }
    let (train, test, features, backbone, context, backend) = match a.features {
        Source::Kmer => {
            if !a.layers.is_empty() {
                bail!("--layers selects backbone layers; k-mer features (--features kmer) have none");
            }
            if a.with_kmers {
                bail!("--with-kmers appends k-mer frequencies to backbone features; --features kmer has them already");
            }
            let mut km = KmerFeatures::new(&a.k, pooling)?;
            check_feature_size(data.train.rows() + data.test.rows(), km.dim(), pooling)?;
            let (tr, te) = featurize(a, &data, &mut km)?;
            let dim = km.dim();
            (tr, te, describe_features(Source::Kmer, "both", pooling, &a.k, &[], dim), None, None, km.describe())
        }
        Source::Backbone => {
            let model = load_model(&a.common)?;
            let (tr, te, dim, context, backend) =
                with_backend!(select_backend(&a.common, &model, a.tiles.chunk)?, b => backbone_features(b, a, &data, model.clone(), pooling))?;
            let bb = heads::Backbone {
                fingerprint: heads::fingerprint(&model),
                d_model: model.config.d_model,
                n_layer: model.config.n_layer,
                rcps: model.config.rcps,
                source: model.source.display().to_string(),
            };
            let k: &[usize] = if a.with_kmers { &a.k } else { &[] };
            let f = describe_features(Source::Backbone, heads::strand_name(a.strand), pooling, k, &ascending_layers(&a.layers), dim);
            (tr, te, f, Some(bb), Some(context), backend)
        }
    };
    Ok(Prepared { label_names: data.label_names, about: data.about, train, test, features, backbone, context, backend })
}

/// Backbone features of both splits on `backend`: (train, test, feature width, context, the
/// featurizer's description).
fn backbone_features<B: Backend>(backend: B, a: &TrainArgs, data: &Data, model: Arc<Model>, pooling: Pooling) -> Result<(Matrix, Matrix, usize, usize, String)> {
    let (context, overlap) = a.tiles.resolve(&model);
    if overlap >= context {
        bail!("--overlap ({overlap}) must be smaller than --context ({context})");
    }
    let mut emb = Embedder::new(backend, model.clone(), a.strand, Feature::Hidden, context, overlap)?;
    emb.set_layers(&ascending_layers(&a.layers))?;
    let (rows, width) = (data.train.rows() + data.test.rows(), emb.width());
    let mut bf = BackboneFeatures::new(emb, pooling);
    if a.with_kmers {
        let mut f = WithKmers::new(bf, &a.k, pooling)?;
        // one pooled row is f.dim() values (bins are refused with k-mers)
        check_feature_size(rows, f.dim(), Pooling::Mean)?;
        let (tr, te) = featurize(a, data, &mut f)?;
        return Ok((tr, te, f.dim(), context, f.describe()));
    }
    check_feature_size(rows, width, pooling)?;
    let (tr, te) = featurize(a, data, &mut bf)?;
    Ok((tr, te, bf.dim(), context, bf.describe()))
}

/// Features of both splits.
fn featurize(a: &TrainArgs, data: &Data, f: &mut dyn Featurizer) -> Result<(Matrix, Matrix)> {
    let mut progress = Progress::new(a.common.quiet);
    let index: HashMap<&str, u32> = data.label_names.iter().enumerate().map(|(i, l)| (l.as_str(), i as u32)).collect();
    let mut one = |split: &Split| -> Result<Matrix> {
        let mut m = Matrix::default();
        let mut row = Vec::new();
        match split {
            Split::Reads(recs) => {
                // short records in batches where the featurizer takes them (packed contexts)
                let policy = Policy { limit: f.batch_limit(), max_bases: f.batch_bases() };
                let lens: Vec<usize> = recs.iter().map(|r| r.tokens.len()).collect();
                for (range, packed) in batch::ranges(&lens, policy) {
                    let group = &recs[range];
                    if packed {
                        let refs: Vec<&[u8]> = group.iter().map(|r| r.tokens.as_slice()).collect();
                        f.read_batch(&refs, &mut m.x).with_context(|| format!("records '{}' to '{}'", group[0].id, group[group.len() - 1].id))?;
                    } else {
                        let r = &group[0];
                        f.read(&r.tokens, &mut row, &mut |n| progress.bases(n)).with_context(|| format!("record '{}'", r.id))?;
                        m.x.extend_from_slice(&row);
                    }
                    for r in group {
                        m.y.push(index[r.label.as_str()]);
                        m.names.push((r.id.clone(), None));
                        progress.record_done(r.tokens.len());
                    }
                }
            }
            Split::Genome(stretches) => {
                let g = data.genome.as_ref().expect("genome data");
                for s in stretches {
                    let toks = &g.tokens[s.chrom][s.start..s.end];
                    f.positions_at(toks, &s.at, &mut m.x, &mut |n| progress.bases(n))?;
                    for &p in &s.at {
                        m.y.push(g.labels[s.chrom][s.start + p] as u32);
                        m.names.push((g.ids[s.chrom].clone(), Some(s.start + p)));
                    }
                    progress.record_done(s.end - s.start);
                }
            }
        }
        Ok(m)
    };
    let train = one(&data.train)?;
    let test = one(&data.test)?;
    progress.finish();
    Ok((train, test))
}
