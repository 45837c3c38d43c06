//! The k-mer baseline's features: canonical k-mer frequencies (a k-mer and its reverse
//! complement count as one, so the features are strand-symmetric like `--strand both`).
//!
//! For each k the counts are divided by the number of k-mers of that size (k-mers touching an
//! N or other non-ACGT base are not counted), and the blocks for each k are concatenated.
//! Read level: over the whole record. Position level: over a centred window of `w` bases,
//! clipped at the record's ends, counting the k-mers that lie wholly inside it.

use anyhow::{bail, Result};

use crate::tokenizer;

pub struct Kmers {
    pub ks: Vec<usize>,
    /// Per k: 2-bit code of a k-mer -> index of its canonical form inside that k's block.
    tables: Vec<Vec<u32>>,
    /// Per k: where its block starts in the feature vector.
    offsets: Vec<usize>,
    dim: usize,
}

/// 2-bit code of a token (A0 C1 G2 T3), or None for anything else.
fn code(t: u8) -> Option<u64> {
    match t {
        tokenizer::A => Some(0),
        tokenizer::C => Some(1),
        tokenizer::G => Some(2),
        tokenizer::T => Some(3),
        _ => None,
    }
}

fn revcomp_code(mut x: u64, k: usize) -> u64 {
    let mut r = 0;
    for _ in 0..k {
        r = (r << 2) | (3 - (x & 3));
        x >>= 2;
    }
    r
}

impl Kmers {
    pub fn new(ks: &[usize]) -> Result<Self> {
        if ks.is_empty() {
            bail!("no k-mer sizes given");
        }
        let mut tables = Vec::new();
        let mut offsets = Vec::new();
        let mut dim = 0;
        for &k in ks {
            if !(1..=8).contains(&k) {
                bail!("k-mer size {k}: expected 1 to 8");
            }
            let n = 1usize << (2 * k);
            let mut table = vec![u32::MAX; n];
            let mut next = 0u32;
            for x in 0..n as u64 {
                let c = x.min(revcomp_code(x, k)) as usize;
                if table[c] == u32::MAX {
                    table[c] = next;
                    next += 1;
                }
                table[x as usize] = table[c];
            }
            offsets.push(dim);
            dim += next as usize;
            tables.push(table);
        }
        Ok(Kmers { ks: ks.to_vec(), tables, offsets, dim })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Feature index of the k-mer (k = `self.ks[j]`) starting at `s`, if it is all ACGT.
    fn index(&self, j: usize, tokens: &[u8], s: usize) -> Option<usize> {
        let k = self.ks[j];
        let mut x = 0u64;
        for &t in &tokens[s..s + k] {
            x = (x << 2) | code(t)?;
        }
        Some(self.offsets[j] + self.tables[j][x as usize] as usize)
    }

    /// Frequencies over `tokens[lo..hi]` into `out` (dim values).
    pub fn range(&self, tokens: &[u8], lo: usize, hi: usize, out: &mut [f32]) {
        out.iter_mut().for_each(|v| *v = 0.0);
        for (j, &k) in self.ks.iter().enumerate() {
            if hi < lo + k {
                continue;
            }
            let mut total = 0u32;
            // rolling code; `valid` counts the ACGT bases at the end of the current k-mer
            let (mut x, mut valid) = (0u64, 0usize);
            let mask = (1u64 << (2 * k)) - 1;
            for (i, &t) in tokens[lo..hi].iter().enumerate() {
                match code(t) {
                    Some(c) => {
                        x = ((x << 2) | c) & mask;
                        valid += 1;
                    }
                    None => valid = 0,
                }
                if i + 1 >= k && valid >= k {
                    out[self.offsets[j] + self.tables[j][x as usize] as usize] += 1.0;
                    total += 1;
                }
            }
            if total > 0 {
                let d = if j + 1 < self.ks.len() { self.offsets[j + 1] } else { self.dim };
                out[self.offsets[j]..d].iter_mut().for_each(|v| *v /= total as f32);
            }
        }
    }

    /// Read level: frequencies over the whole record.
    pub fn record(&self, tokens: &[u8], out: &mut [f32]) {
        self.range(tokens, 0, tokens.len(), out);
    }

    /// Position level: frequencies in the window of `w` bases centred on `p`.
    pub fn window(&self, tokens: &[u8], p: usize, w: usize, out: &mut [f32]) {
        let h = w / 2;
        self.range(tokens, p.saturating_sub(h), (p + h + 1).min(tokens.len()), out);
    }

    /// Position level, every position in order: `f(p, features)`. Counts slide with the
    /// window, so this costs O(dim) per position rather than O(w).
    pub fn each_window(&self, tokens: &[u8], w: usize, f: &mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let len = tokens.len();
        let h = w / 2;
        let mut counts = vec![0u32; self.dim];
        let mut totals = vec![0u32; self.ks.len()];
        let mut out = vec![0f32; self.dim];
        // k-mers with start s are in the window of p when lo(p) <= s and s + k <= hi(p)
        let (mut in_lo, mut in_hi) = (vec![0usize; self.ks.len()], vec![0usize; self.ks.len()]);
        for p in 0..len {
            let lo = p.saturating_sub(h);
            let hi = (p + h + 1).min(len);
            for (j, &k) in self.ks.iter().enumerate() {
                // drop starts below lo (those counted: below in_hi)
                while in_lo[j] < lo {
                    if let Some(i) = (in_lo[j] < in_hi[j]).then(|| self.index(j, tokens, in_lo[j])).flatten() {
                        counts[i] -= 1;
                        totals[j] -= 1;
                    }
                    in_lo[j] += 1;
                }
                // add starts from lo up to hi - k (a window shorter than k holds none)
                in_hi[j] = in_hi[j].max(in_lo[j]);
                while in_hi[j] + k <= hi {
                    if let Some(i) = self.index(j, tokens, in_hi[j]) {
                        counts[i] += 1;
                        totals[j] += 1;
                    }
                    in_hi[j] += 1;
                }
                let end = if j + 1 < self.ks.len() { self.offsets[j + 1] } else { self.dim };
                let t = totals[j].max(1) as f32;
                for i in self.offsets[j]..end {
                    out[i] = counts[i] as f32 / t;
                }
            }
            f(p, &out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        tokenizer::encode_into(s, &mut v);
        v
    }

    #[test]
    fn canonical_sizes() {
        // (4^k + 4^(k/2)) / 2 for even k, 4^k / 2 for odd k
        assert_eq!(Kmers::new(&[4]).unwrap().dim(), 136);
        assert_eq!(Kmers::new(&[5]).unwrap().dim(), 512);
        assert_eq!(Kmers::new(&[6]).unwrap().dim(), 2080);
        assert_eq!(Kmers::new(&[4, 5, 6]).unwrap().dim(), 2728);
        assert!(Kmers::new(&[9]).is_err());
    }

    #[test]
    fn counts_by_hand() {
        let km = Kmers::new(&[1, 2]).unwrap();
        // k=1 canonical: {A/T, C/G}; k=2: 10 canonical dimers
        assert_eq!(km.dim(), 2 + 10);
        let mut out = vec![0.0; km.dim()];
        km.record(&toks(b"AACNGT"), &mut out);
        // 1-mers: A A C G T (N skipped): A/T 3, C/G 2
        assert_eq!(&out[..2], &[0.6, 0.4]);
        // 2-mers: AA, AC, GT (CN, NG skipped); AC and GT are reverse complements
        let two = &out[2..];
        assert!((two.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut v: Vec<f32> = two.iter().copied().filter(|v| *v > 0.0).collect();
        v.sort_by(f32::total_cmp);
        assert_eq!(v, [1.0 / 3.0, 2.0 / 3.0]);
    }

    #[test]
    fn strand_symmetric() {
        let km = Kmers::new(&[3, 4]).unwrap();
        let s = b"ACGGTTACGATTTACGGCA";
        let rc: Vec<u8> = s.iter().rev().map(|b| match b { b'A' => b'T', b'C' => b'G', b'G' => b'C', _ => b'A' }).collect();
        let (mut a, mut b) = (vec![0.0; km.dim()], vec![0.0; km.dim()]);
        km.record(&toks(s), &mut a);
        km.record(&toks(&rc), &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn sliding_equals_direct() {
        let km = Kmers::new(&[2, 3]).unwrap();
        let t = toks(b"ACGTNNACGGATTACAGATTACCAGGTTAANACG");
        for w in [1, 5, 9, 41] {
            let mut direct = vec![0.0; km.dim()];
            km.each_window(&t, w, &mut |p, f| {
                km.window(&t, p, w, &mut direct);
                assert_eq!(f, &direct[..], "w {w} p {p}");
                Ok(())
            })
            .unwrap();
        }
    }
}
