//! Placing contexts over records longer than one context.
//!
//! Bidirectional layers need their whole context, so a long record is cut into overlapping
//! tiles of at most `context` bases; each position's output is taken from the tile where it
//! sits most centrally. Tiles are laid out mirror-symmetrically (an odd number of equal tiles,
//! the middle one centred), so the reverse complement of a record gets exactly the mirrored
//! tiles and `--strand both` stays reverse-complement invariant.

/// One context: compute `start..end`, keep the outputs of `keep_start..keep_end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub start: usize,
    pub end: usize,
    pub keep_start: usize,
    pub keep_end: usize,
}

/// Smallest context the symmetric layout supports.
pub const MIN_CONTEXT: usize = 4;

/// Tiles covering `0..len` with contexts of at most `context` (at least `MIN_CONTEXT`) bases
/// overlapping by at least `overlap` (clamped below `context`).
pub fn plan(len: usize, context: usize, overlap: usize) -> Vec<Tile> {
    let context = context.max(MIN_CONTEXT);
    if len <= context {
        return vec![Tile { start: 0, end: len, keep_start: 0, keep_end: len }];
    }
    // equal tiles whose length has the parity of len, so the middle one can sit centred
    let c = if (len - context) % 2 == 0 { context } else { context - 1 };
    let ov = overlap.min(c.saturating_sub(2));
    let step = (c - ov).max(1);
    let mut n = (len - ov).div_ceil(step).max(2);
    if n % 2 == 0 {
        n += 1;
    }
    let m = (n - 1) / 2;
    let span = len - c;
    let mut starts = vec![0usize; n];
    for i in 0..=m {
        // rounded i·span/(n-1); the middle one is exactly span/2 since span is even
        starts[i] = (2 * i * span + (n - 1)) / (2 * (n - 1));
        starts[n - 1 - i] = span - starts[i];
    }
    // boundaries of the kept parts: midpoints of the overlaps, mirrored for the right half
    let mut cuts = vec![0usize; n - 1];
    for i in 0..m {
        cuts[i] = (starts[i + 1] + starts[i] + c) / 2;
        cuts[n - 2 - i] = len - cuts[i];
    }
    (0..n)
        .map(|i| Tile {
            start: starts[i],
            end: starts[i] + c,
            keep_start: if i == 0 { 0 } else { cuts[i - 1] },
            keep_end: if i == n - 1 { len } else { cuts[i] },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(len: usize, context: usize, overlap: usize) {
        let tiles = plan(len, context, overlap);
        assert_eq!(tiles[0].keep_start, 0);
        assert_eq!(tiles.last().unwrap().keep_end, len);
        for w in tiles.windows(2) {
            assert_eq!(w[0].keep_end, w[1].keep_start, "{len} {context} {overlap}: {tiles:?}");
        }
        for (i, t) in tiles.iter().enumerate() {
            assert!(t.end - t.start <= context && t.end <= len);
            assert!(t.start <= t.keep_start && t.keep_start < t.keep_end && t.keep_end <= t.end, "{t:?}");
            // mirror symmetry: tile i mirrors tile n-1-i
            let m = tiles[tiles.len() - 1 - i];
            assert_eq!((m.start, m.end), (len - t.end, len - t.start));
            assert_eq!((m.keep_start, m.keep_end), (len - t.keep_end, len - t.keep_start));
        }
        if tiles.len() > 1 {
            // every kept position has at least about overlap/2 context on each inner side
            for t in &tiles {
                if t.start > 0 {
                    assert!(t.keep_start - t.start >= (overlap.min(context - 3) / 2).saturating_sub(1), "{t:?}");
                }
            }
        }
    }

    #[test]
    fn covers_and_mirrors() {
        for len in [1, 2, 7, 100, 101, 1000, 1001, 4097, 65_537] {
            for context in [4, 5, 10, 64, 99, 100, 1000] {
                for overlap in [0, 1, 8, 33, 500] {
                    check(len, context, overlap);
                }
            }
        }
    }

    #[test]
    fn one_tile_when_it_fits() {
        assert_eq!(plan(100, 100, 10), vec![Tile { start: 0, end: 100, keep_start: 0, keep_end: 100 }]);
    }
}
