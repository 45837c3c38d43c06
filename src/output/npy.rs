//! `.npy` output: one file per record in a folder, with `index.csv` naming each record's
//! file. The header (format 1.0, little-endian f32, shape known up front) goes first, so rows
//! are streamed after it.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Result};

use super::file::{is_gz, AtomicDir};

pub fn write_header<W: Write>(w: &mut W, rows: usize, cols: usize) -> io::Result<()> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic(6) + version(2) + len(2) + dict + padding + '\n' must be a multiple of 64
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let len = (dict.len() + pad + 1) as u16;
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(dict.as_bytes())?;
    w.write_all(&vec![b' '; pad])?;
    w.write_all(b"\n")
}


/// The output folder: written under a temporary name, renamed into place by `commit`.
pub struct NpyDir {
    dir: AtomicDir,
    index: csv::Writer<BufWriter<File>>,
    ids: HashSet<String>,
    /// File names given so far, lowercased: distinct on case-insensitive file systems too.
    names: HashSet<String>,
}

impl NpyDir {
    pub fn create(dest: &Path) -> Result<Self> {
        if is_gz(dest) {
            bail!("{}: npy output is a folder of uncompressed .npy files; drop the .gz", dest.display());
        }
        let dir = AtomicDir::create(dest)?;
        let mut index = csv::Writer::from_writer(BufWriter::new(File::create(dir.tmp.join("index.csv"))?));
        index.write_record(["id", "file", "length", "width"])?;
        Ok(NpyDir { dir, index, ids: HashSet::new(), names: HashSet::new() })
    }

    /// A file name for `id` that no other record of this run has, whatever the ids: the
    /// id made safe (`safe_name`), then `_2`, `_3`, ... until it is free.
    fn file_for(&mut self, id: &str) -> Result<String> {
        if !self.ids.insert(id.to_string()) {
            bail!("duplicate record id '{id}' (npy output needs unique ids)");
        }
        let base = safe_name(id);
        let mut k = 1;
        loop {
            let name = if k == 1 { format!("{base}.npy") } else { format!("{base}_{k}.npy") };
            if self.names.insert(name.to_lowercase()) {
                return Ok(name);
            }
            k += 1;
        }
    }

    /// One record's `[rows, width]` matrix; `body` writes its rows in order.
    pub fn record(&mut self, id: &str, rows: usize, width: usize, body: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
        let file = self.file_for(id)?;
        let mut w = BufWriter::new(File::create(self.dir.tmp.join(&file))?);
        write_header(&mut w, rows, width)?;
        body(&mut w)?;
        w.flush()?;
        self.index.write_record([id, &file, &rows.to_string(), &width.to_string()])?;
        Ok(())
    }

    pub fn commit(mut self) -> Result<()> {
        self.index.flush()?;
        drop(self.index);
        self.dir.commit()
    }
}

/// A record id made safe as a file name: anything but `[A-Za-z0-9._-]` becomes `_`.
pub fn safe_name(id: &str) -> String {
    let s: String = id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with('.') { format!("_{s}") } else { s }
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_is_aligned() {
        let mut v = Vec::new();
        super::write_header(&mut v, 123, 45).unwrap();
        assert_eq!(v.len() % 64, 0);
        assert!(std::str::from_utf8(&v[10..]).unwrap().contains("'shape': (123, 45)"));
        assert_eq!(super::safe_name("chr1|x/y"), "chr1_x_y");
        assert_eq!(super::safe_name(".."), "_..");
    }

    /// Ids that make the same safe name, or a safe name another record already took, still
    /// get files of their own.
    #[test]
    fn file_names_are_unique_whatever_the_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = super::NpyDir::create(&tmp.path().join("out")).unwrap();
        let names: Vec<String> = ["a/b", "a_b", "a_b_2", "A_B", "x"].iter().map(|id| d.file_for(id).unwrap()).collect();
        let unique: std::collections::HashSet<String> = names.iter().map(|n| n.to_lowercase()).collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(d.file_for("x").unwrap_err().to_string().contains("duplicate record id 'x'"));
    }
}
