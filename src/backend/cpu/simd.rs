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
    // Plain selects, not `clamp`/`as i32`: their NaN rules would keep LLVM from vectorising.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let r = (x * LOG2E + ROUND) - ROUND;
    let f = x - r * LN2_HI - r * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * f + 1.398_199_9e-3;
    p = p * f + 8.333_452e-3;
    p = p * f + 4.166_579_6e-2;
    p = p * f + 1.666_666_5e-1;
    p = p * f + 5.000_000_1e-1;
    let y = p * f * f + f + 1.0;
    // 2^r without a float->int conversion: r + 127 lands in the low mantissa bits of
    // (r + 127 + 2^23), and shifting by 23 moves it into the exponent field.
    let bits = (r + (127.0 + 8_388_608.0)).to_bits() << 23;
    y * f32::from_bits(bits)
}

/// ln(1 + u) for u in [0, 1] as 2·atanh(u / (2 + u)): no cancellation for small u, and a
/// short odd series since the argument stays below 1/3 (relative error < 1e-7).
#[inline(always)]
fn ln_1p_unit(u: f32) -> f32 {
    let s = u / (2.0 + u);
    let s2 = s * s;
    let mut p = 1.0 / 13.0_f32;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    2.0 * (s + s * s2 * p)
}

#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// softplus with PyTorch's threshold: identity above 20; log(1 + e^x) written as
/// max(x, 0) + log1p(e^-|x|) so every branch is a select.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    let pos = if x > 0.0 { x } else { 0.0 };
    let v = pos + ln_1p_unit(exp(-x.abs()));
    if x > 20.0 { x } else { v }
}

/// Run `f` in a function compiled for the detected ISA, so the elementwise loops it inlines
/// are vectorised with the wide registers (rustc's baseline is SSE2).
#[inline(always)]
pub fn vectorized<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn v512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn v256<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: each variant runs only on a CPU that reported the features.
        match isa {
            Isa::Avx512 => return unsafe { v512(f) },
            Isa::Avx2 => return unsafe { v256(f) },
            Isa::Baseline => {}
        }
    }
    let _ = isa;
    f()
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
        let mut x = -30.0f32;
        while x < 30.0 {
            let want = if x > 20.0 { x as f64 } else { (x as f64).exp().ln_1p() };
            let rel = ((softplus(x) as f64 - want) / want).abs();
            assert!(rel < 5e-7, "softplus({x}) off by {rel}");
            x += 0.00731;
        }
    }
}
