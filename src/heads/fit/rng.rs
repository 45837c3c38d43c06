//! The seeded randomness of training: one small generator, so that a seed gives the same
//! splits, samples and initial weights on every machine.

/// SplitMix64: a small seeded generator for splits, sampling and initialisation.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize % n.max(1)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Split row indices into (kept, held out), per class, so each class with two or more rows has
/// at least one on each side. Deterministic for a seed.
pub fn stratified_split(y: &[u32], n_classes: usize, held_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let (mut keep, mut held) = (Vec::new(), Vec::new());
    for c in 0..n_classes as u32 {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        rng.shuffle(&mut idx);
        let mut k = (idx.len() as f64 * held_fraction).round() as usize;
        if idx.len() >= 2 {
            k = k.clamp(1, idx.len() - 1);
        } else {
            k = 0;
        }
        held.extend_from_slice(&idx[..k]);
        keep.extend_from_slice(&idx[k..]);
    }
    keep.sort_unstable();
    held.sort_unstable();
    (keep, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_and_disjoint() {
        let y: Vec<u32> = (0..100).map(|i| if i < 90 { 0 } else { 1 }).collect();
        let (a, b) = stratified_split(&y, 2, 0.2, 7);
        assert_eq!(a.len() + b.len(), 100);
        assert!(a.iter().all(|i| !b.contains(i)));
        assert_eq!(b.iter().filter(|&&i| y[i] == 1).count(), 2);
        assert_eq!(b.iter().filter(|&&i| y[i] == 0).count(), 18);
        assert_eq!(stratified_split(&y, 2, 0.2, 7), (a, b));
    }
}
