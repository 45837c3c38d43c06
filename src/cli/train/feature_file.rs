//! The file of `train --save-features` / `--load-features`: both splits' feature matrices and
//! labels as safetensors, with what they are (labels, features, backbone, data) as JSON
//! metadata, so that other heads can be fitted without running the model again.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use super::featurize::{Matrix, Prepared};
use crate::cli::flag_value;
use crate::heads::{self, Level};

const FEATURES_KEY: &str = "dna_mamba_features";

/// Both splits of `p`, written whole or not at all.
pub(super) fn save(path: &Path, p: &Prepared) -> Result<()> {
    use safetensors::tensor::TensorView;
    let d = p.features.dim;
    let ys: Vec<Vec<u8>> = [&p.train.y, &p.test.y].iter().map(|y| y.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views = vec![
        ("x_train".to_string(), TensorView::new(safetensors::Dtype::F32, vec![p.train.y.len(), d], bytemuck::cast_slice(&p.train.x))?),
        ("y_train".to_string(), TensorView::new(safetensors::Dtype::U32, vec![p.train.y.len()], &ys[0])?),
        ("x_test".to_string(), TensorView::new(safetensors::Dtype::F32, vec![p.test.y.len(), d], bytemuck::cast_slice(&p.test.x))?),
        ("y_test".to_string(), TensorView::new(safetensors::Dtype::U32, vec![p.test.y.len()], &ys[1])?),
    ];
    let doc = json!({"labels": p.label_names, "features": p.features, "backbone": p.backbone, "context": p.context, "data": p.about});
    let meta = HashMap::from([(FEATURES_KEY.to_string(), doc.to_string())]);
    let bytes = safetensors::serialize(views, Some(meta))?;
    let mut f = crate::output::AtomicFile::create(path)?;
    f.write_all(&bytes)?;
    f.commit()
}

/// The features of `save`, refused unless they are for `level`.
pub(super) fn load(path: &Path, level: Level) -> Result<Prepared> {
    // the file is read whole: every size below is checked against it before more is allocated
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let name = path.display();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{name}: not a safetensors file: {e}"))?;
    let doc: serde_json::Value = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(FEATURES_KEY))
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| anyhow!("{name}: the {FEATURES_KEY} metadata is not JSON: {e}"))?
        .ok_or_else(|| anyhow!("{name}: not a feature file of `train --save-features`"))?;
    let field = |k: &str| doc.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let features: heads::Features = serde_json::from_value(field("features")).map_err(|e| anyhow!("{name}: metadata field features: {e}"))?;
    let label_names: Vec<String> = serde_json::from_value(field("labels")).map_err(|e| anyhow!("{name}: metadata field labels: {e}"))?;
    let d = features.dim;
    if d == 0 {
        bail!("{name}: the features have dim 0 (a feature vector needs at least one value)");
    }
    if label_names.len() < 2 {
        bail!("{name}: {} label names; a head needs at least two", label_names.len());
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{name}: {e}"))?;
    let mat = |x: &str, y: &str| -> Result<Matrix> {
        let tensor = |k: &str, dtype: safetensors::Dtype| {
            let t = st.tensor(k).map_err(|_| anyhow!("{name}: no tensor {k}"))?;
            if t.dtype() != dtype {
                bail!("{name}: tensor {k} is {:?}, expected {dtype:?}", t.dtype());
            }
            Ok(t)
        };
        let (tx, ty) = (tensor(x, safetensors::Dtype::F32)?, tensor(y, safetensors::Dtype::U32)?);
        let &[rows] = ty.shape() else { bail!("{name}: tensor {y} has shape {:?}, expected one label per row", ty.shape()) };
        // safetensors checked that each shape matches its byte length, so rows × d is bounded by the file
        if tx.shape() != [rows, d] {
            bail!("{name}: tensor {x} has shape {:?}, expected [{rows}, {d}] ({rows} labels in {y}, dim {d} in the metadata)", tx.shape());
        }
        let m = Matrix {
            x: tx.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            y: ty.data().chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect(),
            names: (0..rows).map(|i| (format!("row{i}"), None)).collect(),
        };
        if let Some((i, v)) = m.y.iter().enumerate().find(|(_, v)| **v as usize >= label_names.len()) {
            bail!("{name}: {y} row {i} has label index {v}, but the file names {} labels", label_names.len());
        }
        if let Some(i) = m.x.iter().position(|v| !v.is_finite()) {
            bail!("{name}: {x} row {} column {} is not finite ({})", i / d, i % d, m.x[i]);
        }
        Ok(m)
    };
    if features.pooling.level() != level {
        bail!("{name}: these features are for --level {}", flag_value(&features.pooling.level()));
    }
    Ok(Prepared {
        train: mat("x_train", "y_train")?,
        test: mat("x_test", "y_test")?,
        backbone: serde_json::from_value(field("backbone")).map_err(|e| anyhow!("{name}: metadata field backbone: {e}"))?,
        context: serde_json::from_value(field("context")).map_err(|e| anyhow!("{name}: metadata field context: {e}"))?,
        about: field("data"),
        backend: format!("features loaded from {name}"),
        features,
        label_names,
    })
}
