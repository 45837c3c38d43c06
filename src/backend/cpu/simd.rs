//! Branch-free elementwise math that the compiler vectorises, and runtime ISA dispatch.
//!
//! `std`'s `f32::exp` is a libm call per element, which blocks vectorisation of the scan's
//! inner loop (di·N exponentials per position). `exp` here is the Cephes `expf` polynomial
//! (relative error ~2e-7 over the range the scan uses), written so LLVM emits SIMD for it.
//! Polynomials go through `Fma`: one vfmadd per term in the AVX2 / AVX-512 variants (Rust never
//! contracts `a * b + c` itself), with the same rounding in both; the baseline variant on x86-64
//! multiplies and adds.

/// How `a·b + c` is computed: fused (one rounding; one instruction in the AVX2 / AVX-512
/// variants and on aarch64) or as a product and a sum (an x86-64 without FMA, where `mul_add`
/// would be a libm call per term, ~13x slower).
pub trait Fma {
    fn fma(a: f32, b: f32, c: f32) -> f32;
}
pub struct Fused;
pub struct Split;
impl Fma for Fused {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}
impl Fma for Split {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}
/// The baseline variant's arithmetic.
#[cfg(target_arch = "x86_64")]
pub type BaselineFma = Split;
#[cfg(not(target_arch = "x86_64"))]
pub type BaselineFma = Fused;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to an integer.
const ROUND: f32 = 12_582_912.0;

#[inline(always)]
pub fn exp<M: Fma>(x: f32) -> f32 {
    // Below -87.3 the true value is under f32's normal range; flushing it there is harmless.
    // Plain selects, not `clamp`/`as i32`: their NaN rules would keep LLVM from vectorising.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let r = M::fma(x, LOG2E, ROUND) - ROUND;
    let f = M::fma(-r, LN2_LO, M::fma(-r, LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = M::fma(p, f, 1.398_199_9e-3);
    p = M::fma(p, f, 8.333_452e-3);
    p = M::fma(p, f, 4.166_579_6e-2);
    p = M::fma(p, f, 1.666_666_5e-1);
    p = M::fma(p, f, 5.000_000_1e-1);
    let y = M::fma(p * f, f, f) + 1.0;
    // 2^r without a float->int conversion: r + 127 lands in the low mantissa bits of
    // (r + 127 + 2^23), and shifting by 23 moves it into the exponent field.
    let bits = (r + (127.0 + 8_388_608.0)).to_bits() << 23;
    y * f32::from_bits(bits)
}

/// 2^t for t <= 0: the scan's decays, with t = Δ·A·log2(e) and log2(e) folded into A once
/// (`scan::a_blocks`). Cephes' `exp2f`: the nearest integer r, a degree-6 polynomial in the
/// fraction t - r (exact, in [-1/2, 1/2]), r added to the exponent. 13 vector ops where `exp`
/// takes 19 (one clamp, no ln 2 split). Δ > 0 and A < 0 keep t <= 0; below -126 the
/// decay is under f32's normal range and is flushed to 2^-126, as `exp` does below -87.
#[inline(always)]
pub fn exp2_decay<M: Fma>(t: f32) -> f32 {
    let t = if t < -126.0 { -126.0 } else { t };
    let r = (t + ROUND) - ROUND;
    let f = t - r;
    let mut p = 1.535_336_2e-4_f32;
    p = M::fma(p, f, 1.339_887_4e-3);
    p = M::fma(p, f, 9.618_437e-3);
    p = M::fma(p, f, 5.550_332_5e-2);
    p = M::fma(p, f, 2.402_264_8e-1);
    p = M::fma(p, f, 6.931_472e-1);
    let y = M::fma(f, p, 1.0);
    let bits = (r + (127.0 + 8_388_608.0)).to_bits() << 23;
    y * f32::from_bits(bits)
}

/// ln(1 + u) for u in [0, 1] as 2·atanh(u / (2 + u)): no cancellation for small u, and a
/// short odd series since the argument stays below 1/3 (relative error < 1e-7).
#[inline(always)]
fn ln_1p_unit<M: Fma>(u: f32) -> f32 {
    let s = u / (2.0 + u);
    let s2 = s * s;
    let mut p = 1.0 / 13.0_f32;
    p = M::fma(p, s2, 1.0 / 11.0);
    p = M::fma(p, s2, 1.0 / 9.0);
    p = M::fma(p, s2, 1.0 / 7.0);
    p = M::fma(p, s2, 1.0 / 5.0);
    p = M::fma(p, s2, 1.0 / 3.0);
    2.0 * M::fma(s * s2, p, s)
}

#[inline(always)]
pub fn silu<M: Fma>(x: f32) -> f32 {
    x / (1.0 + exp::<M>(-x))
}

/// softplus with PyTorch's threshold: identity above 20; log(1 + e^x) written as
/// max(x, 0) + log1p(e^-|x|) so every branch is a select.
#[inline(always)]
pub fn softplus<M: Fma>(x: f32) -> f32 {
    let pos = if x > 0.0 { x } else { 0.0 };
    let v = pos + ln_1p_unit::<M>(exp::<M>(-x.abs()));
    if x > 20.0 { x } else { v }
}

/// `row[i] = softplus(row[i] + bias[i])` (Δ from dt_proj's output).
#[inline(always)]
unsafe fn softplus_bias<M: Fma>(row: &mut [f32], bias: &[f32]) {
    for (v, b) in row.iter_mut().zip(bias) {
        *v = softplus::<M>(*v + b);
    }
}

isa_variants!(pub unsafe fn softplus_bias_isa(row: &mut [f32], bias: &[f32]) => softplus_bias);

/// `pub fn $name(isa, args)` that runs `$body(args)` compiled for the detected ISA, so the
/// elementwise loops `$body` inlines are vectorised with the wide registers and `Fma::fma` is
/// one instruction (rustc's baseline is SSE2 without FMA). `$body` must be
/// `#[inline(always)]` and generic over `M: Fma`: a closure handed to a target-feature function
/// was not inlined there, and ran as SSE2 code.
macro_rules! isa_variants {
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$m])*
        /// # Safety
        /// The contract of the body it runs.
        $vis unsafe fn $name(isa: $crate::backend::cpu::simd::Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn v512($($arg: $ty),*) {
                    unsafe { $body::<$crate::backend::cpu::simd::Fused>($($arg),*) }
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v256($($arg: $ty),*) {
                    unsafe { $body::<$crate::backend::cpu::simd::Fused>($($arg),*) }
                }
                // SAFETY: each variant runs only on a CPU that reported its features.
                match isa {
                    $crate::backend::cpu::simd::Isa::Avx512 => return unsafe { v512($($arg),*) },
                    $crate::backend::cpu::simd::Isa::Avx2 => return unsafe { v256($($arg),*) },
                    $crate::backend::cpu::simd::Isa::Baseline => {}
                }
            }
            let _ = isa;
            unsafe { $body::<$crate::backend::cpu::simd::BaselineFma>($($arg),*) }
        }
    };
}
pub(crate) use isa_variants;

/// Widest vector ISA this CPU runs, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

/// The detected ISA, or a narrower one named by `DNA_MAMBA_CPU_ISA` (`avx2`, `baseline`): how the
/// tests run the variants this CPU would not pick against the float64 reference, and how they
/// are timed. It never selects an ISA the CPU lacks.
pub fn isa() -> Isa {
    let detected = detect();
    match std::env::var("DNA_MAMBA_CPU_ISA").as_deref() {
        Ok("avx2") if detected == Isa::Avx512 => Isa::Avx2,
        Ok("baseline") => Isa::Baseline,
        Ok("avx2" | "avx512") | Err(_) => detected,
        Ok(other) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| eprintln!("warning: DNA_MAMBA_CPU_ISA={other:?} is not avx512, avx2 or baseline: ignored"));
            detected
        }
    }
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        // the AVX-512 variants are compiled with avx512f, avx512vl, avx2 and fma
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
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
        check::<Fused>();
        check::<Split>();
    }

    fn check<M: Fma>() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp::<M>(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp::<M>(-200.0), (-87.0f32).exp().max(exp::<M>(-87.0)));
        let mut worst2 = 0f64;
        let mut t = -130.0f32;
        while t <= 0.0 {
            let want = (t.max(-126.0) as f64).exp2();
            worst2 = worst2.max(((exp2_decay::<M>(t) as f64 - want) / want).abs());
            t += 0.000_731;
        }
        assert!(worst2 < 2.5e-7, "exp2_decay: worst relative error {worst2}");
        assert_eq!(exp2_decay::<M>(0.0), 1.0);
        assert_eq!(exp2_decay::<M>(-1.0), 0.5);
        assert!((silu::<M>(-100.0)).abs() < 1e-30 && silu::<M>(0.0) == 0.0);
        assert!((softplus::<M>(30.0) - 30.0).abs() == 0.0 && (softplus::<M>(0.0) - 2f32.ln()).abs() < 1e-7);
        let mut x = -30.0f32;
        while x < 30.0 {
            let want = if x > 20.0 { x as f64 } else { (x as f64).exp().ln_1p() };
            let rel = ((softplus::<M>(x) as f64 - want) / want).abs();
            assert!(rel < 5e-7, "softplus::<M>({x}) off by {rel}");
            x += 0.00731;
        }
    }
}
