//! Streaming safetensors writer: the header (names, shapes, offsets) first, then each
//! tensor's f32 rows in order, so no tensor is ever held whole in memory.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{bail, Result};

use super::file::is_gz;

/// The name the format keeps for its metadata: no tensor may have it.
pub const RESERVED: &str = "__metadata__";

/// Refuse a destination the format cannot be (a pipe, or a compressed name it would not be).
pub fn check_path(path: Option<&Path>) -> Result<&Path> {
    match path {
        Some(p) if p != Path::new("-") && is_gz(p) => {
            bail!("{}: safetensors output is not compressed (tools memory-map it); drop the .gz", p.display())
        }
        Some(p) if p != Path::new("-") => Ok(p),
        _ => bail!("--format safetensors needs -o FILE (its header must be written before the data, so it cannot go to a pipe)"),
    }
}

/// Refuse a record id that cannot be a tensor name.
pub fn check_name(id: &str) -> Result<()> {
    if id == RESERVED {
        bail!("record id '{RESERVED}' is reserved by the safetensors format; rename the record");
    }
    Ok(())
}

/// Write the header for F32 tensors `(name, [rows, cols])` laid out back to back.
pub fn write_header<W: Write>(w: &mut W, tensors: &[(String, [usize; 2])], metadata: &[(&str, String)]) -> io::Result<()> {
    let mut map = serde_json::Map::new();
    let meta: serde_json::Map<String, serde_json::Value> =
        metadata.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone()))).collect();
    map.insert("__metadata__".into(), meta.into());
    let mut offset = 0usize;
    for (name, [r, c]) in tensors {
        let bytes = r * c * 4;
        map.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": [r, c], "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&map).map_err(io::Error::other)?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)
}
