//! Branch-free elementwise math that the compiler vectorises, and runtime ISA dispatch.
//!
//! `std`'s `f32::exp` is a libm call per element, which blocks vectorisation of the scan's
//! inner loop (di·N exponentials per position). `exp` here is the Cephes `expf` polynomial
//! (relative error ~2e-7 over the range the scan uses), written so LLVM emits SIMD for it.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to an integer.
const ROUND: f32 = 12_582_912.0;

#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Below -87.3 the true value is under f32's normal range; flushing it there is harmless.
    let x = x.clamp(-87.0, 88.0);
    let r = (x * LOG2E + ROUND) - ROUND;
    let f = x - r * LN2_HI - r * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * f + 1.398_199_9e-3;
    p = p * f + 8.333_452e-3;
    p = p * f + 4.166_579_6e-2;
    p = p * f + 1.666_666_5e-1;
    p = p * f + 5.000_000_1e-1;
    let y = p * f * f + f + 1.0;
    y * f32::from_bits(((r as i32 + 127) << 23) as u32)
}

#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// softplus with PyTorch's threshold: identity above 20.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// Widest vector ISA this CPU runs, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

pub fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(-200.0), (-87.0f32).exp().max(exp(-87.0)));
        assert!((silu(-100.0)).abs() < 1e-30 && silu(0.0) == 0.0);
        assert!((softplus(30.0) - 30.0).abs() == 0.0 && (softplus(0.0) - 2f32.ln()).abs() < 1e-7);
    }
}
