//! The tensors of a checkpoint by name, whatever files hold them: `model.safetensors`,
//! `pytorch_model.bin` (read by `torch`), or either sharded beside its `*.index.json`
//! (the Hugging Face layout: `weight_map` names the file of every tensor).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::torch;
use crate::error::ModelError;

/// One tensor as stored: its dtype, shape and little-endian bytes.
pub struct View<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

enum Shard<'a> {
    Safetensors(SafeTensors<'a>),
    Torch(BTreeMap<String, torch::Tensor>),
}

pub struct Tensors<'a> {
    shards: Vec<Shard<'a>>,
    /// Tensor name -> shard.
    index: HashMap<String, usize>,
}

impl<'a> Tensors<'a> {
    pub fn names(&self) -> Vec<&str> {
        self.index.keys().map(String::as_str).collect()
    }

    pub fn get(&self, name: &str) -> Option<View<'_>> {
        match &self.shards[*self.index.get(name)?] {
            Shard::Safetensors(st) => st.tensor(name).ok().map(|t| View { dtype: t.dtype(), shape: t.shape().to_vec(), data: t.data() }),
            Shard::Torch(m) => m.get(name).map(|t| View { dtype: t.dtype, shape: t.shape.clone(), data: &t.data }),
        }
    }

    /// Safetensors bytes: a mapped file or the embedded default model.
    pub fn safetensors(bytes: &'a [u8], path: &Path) -> Result<Self, ModelError> {
        let mut t = Tensors { shards: Vec::new(), index: HashMap::new() };
        t.add_safetensors(bytes, path)?;
        Ok(t)
    }

    fn add_safetensors(&mut self, bytes: &'a [u8], path: &Path) -> Result<(), ModelError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors { path: path.to_path_buf(), msg: e.to_string() })?;
        let k = self.shards.len();
        for n in st.names() {
            self.insert(n.to_string(), k, path)?;
        }
        self.shards.push(Shard::Safetensors(st));
        Ok(())
    }

    fn add_torch(&mut self, path: &Path) -> Result<(), ModelError> {
        let m = torch::read(path).map_err(|msg| ModelError::Torch { path: path.to_path_buf(), msg })?;
        let k = self.shards.len();
        for n in m.keys() {
            self.insert(n.clone(), k, path)?;
        }
        self.shards.push(Shard::Torch(m));
        Ok(())
    }

    fn insert(&mut self, name: String, shard: usize, path: &Path) -> Result<(), ModelError> {
        if self.index.insert(name.clone(), shard).is_some() {
            return Err(ModelError::Value { name, msg: format!("stored twice (again in {})", path.display()) });
        }
        Ok(())
    }
}

/// Which files of a model folder hold its weights.
pub enum Layout {
    Safetensors(Vec<PathBuf>),
    Torch(Vec<PathBuf>),
}

/// Find the weights of `dir`: safetensors first (single, then sharded), then PyTorch's.
pub fn find(dir: &Path) -> Result<Layout, ModelError> {
    let single = |name: &str| dir.join(name).exists().then(|| vec![dir.join(name)]);
    if let Some(p) = single("model.safetensors") {
        return Ok(Layout::Safetensors(p));
    }
    if let Some(p) = shards(dir, "model.safetensors.index.json")? {
        return Ok(Layout::Safetensors(p));
    }
    if let Some(p) = single("pytorch_model.bin") {
        return Ok(Layout::Torch(p));
    }
    if let Some(p) = shards(dir, "pytorch_model.bin.index.json")? {
        return Ok(Layout::Torch(p));
    }
    Err(ModelError::Io {
        path: dir.join("model.safetensors"),
        err: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no weights in the folder (model.safetensors, pytorch_model.bin, or a sharded *.index.json)",
        ),
    })
}

/// The shard files an index names, each once, in order of first appearance.
fn shards(dir: &Path, index: &str) -> Result<Option<Vec<PathBuf>>, ModelError> {
    let path = dir.join(index);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(ModelError::Io { path, err }),
    };
    let bad = |msg: String| ModelError::Config(format!("{}: {msg}", path.display()));
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = doc.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no weight_map".into()))?;
    let mut files: Vec<String> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("{name}: the shard is not a file name")))?;
        // shards sit beside the index: a name with a path in it could reach anywhere
        if file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') {
            return Err(bad(format!("shard {file:?} is not a plain file name")));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    if files.is_empty() {
        return Err(bad("the weight_map is empty".into()));
    }
    Ok(Some(files.into_iter().map(|f| dir.join(f)).collect()))
}

/// Read every file of a layout: safetensors shards are mapped (`maps` keeps them alive while
/// the tensors borrow them), PyTorch shards read.
pub fn open<'a>(layout: &Layout, maps: &'a [memmap2::Mmap]) -> Result<Tensors<'a>, ModelError> {
    let mut t = Tensors { shards: Vec::new(), index: HashMap::new() };
    match layout {
        Layout::Safetensors(paths) => {
            for (p, m) in paths.iter().zip(maps) {
                t.add_safetensors(m, p)?;
            }
        }
        Layout::Torch(paths) => {
            for p in paths {
                t.add_torch(p)?;
            }
        }
    }
    Ok(t)
}

/// The maps `open` needs for a layout (none for PyTorch files, which are read whole).
pub fn map(layout: &Layout) -> Result<Vec<memmap2::Mmap>, ModelError> {
    let Layout::Safetensors(paths) = layout else { return Ok(Vec::new()) };
    paths
        .iter()
        .map(|p| {
            let file = std::fs::File::open(p).map_err(|err| ModelError::Io { path: p.clone(), err })?;
            // SAFETY: the map is only read while the weights are loaded; a concurrent truncation
            // by another process would be a SIGBUS, which read() could not prevent either.
            unsafe { memmap2::Mmap::map(&file) }.map_err(|err| ModelError::Io { path: p.clone(), err })
        })
        .collect()
}
