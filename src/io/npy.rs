//! `.npy` (format 1.0) header for a little-endian f32 matrix whose shape is known up front,
//! so rows can be streamed after it.

use std::io::{self, Write};

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

pub fn write_f32s<W: Write>(w: &mut W, v: &[f32]) -> io::Result<()> {
    w.write_all(bytemuck::cast_slice(v))
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
}
