//! Streaming safetensors writer: the header (names, shapes, offsets) first, then each
//! tensor's f32 rows in order, so no tensor is ever held whole in memory.

use std::io::{self, Write};

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
