//! The transcendental functions of the forward pass, the same to the last bit on every target.
//!
//! The standard library calls the platform's C library natively and another implementation in
//! wasm, and their last bits differ now and then; a last bit can flip a greedy choice. Here
//! each function is computed in f64 by the `libm` crate (one implementation everywhere) and
//! rounded once to f32, which gives the correctly rounded result but in vanishingly rare
//! cases — the results llama.cpp's C library (glibc) gives too, where a plain f32 `libm::expf`
//! is off by one bit often enough to change SmolLM2's greedy text.

pub(crate) fn exp(x: f32) -> f32 {
    libm::exp(f64::from(x)) as f32
}

pub(crate) fn ln(x: f32) -> f32 {
    libm::log(f64::from(x)) as f32
}

pub(crate) fn powf(x: f32, y: f32) -> f32 {
    libm::pow(f64::from(x), f64::from(y)) as f32
}

pub(crate) fn sin(x: f32) -> f32 {
    libm::sin(f64::from(x)) as f32
}

pub(crate) fn cos(x: f32) -> f32 {
    libm::cos(f64::from(x)) as f32
}

pub(crate) fn tanh(x: f32) -> f32 {
    libm::tanh(f64::from(x)) as f32
}

/// `a·b + c` rounded once (a fused multiply-add), the same bits on every target. Natively this
/// is the FMA instruction; wasm has none, and its software `fmaf` is slow, so there the product
/// (exact in f64) and the sum are formed in f64 and rounded to f32, with the one case where
/// rounding twice could differ from rounding once — an inexact f64 sum that lands exactly
/// halfway between two f32 values — settled by the sum's exact error.
#[inline(always)]
pub(crate) fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        a.mul_add(b, c)
    }
    #[cfg(target_arch = "wasm32")]
    {
        fma_via_f64(a, b, c)
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
#[inline(always)]
fn fma_via_f64(a: f32, b: f32, c: f32) -> f32 {
    let product = f64::from(a) * f64::from(b); // exact: 24 + 24 significant bits
    let c = f64::from(c);
    let sum = product + c;
    let bits = sum.to_bits();
    // The 29 bits below an f32 significand hold exactly one half: a tie for the f32 rounding.
    // Subnormal f32 results have fewer bits and go to the slow path too.
    if bits & 0x1fff_ffff != 0x1000_0000 && sum.abs() >= f64::from(f32::MIN_POSITIVE) || !sum.is_finite() {
        return sum as f32;
    }
    if sum.abs() < f64::from(f32::MIN_POSITIVE) {
        return libm::fmaf(a, b, f32::from_bits(0) + c as f32);
    }
    // TwoSum: the exact error of the f64 sum says which way the true value lies.
    let c_part = sum - product;
    let error = (product - (sum - c_part)) + (c - c_part);
    if error == 0.0 {
        return sum as f32; // a true tie: round half to even is right
    }
    let toward = if (error > 0.0) == (sum > 0.0) { bits + 1 } else { bits - 1 };
    f64::from_bits(toward) as f32
}

/// e^x as ggml's vectorised CPU kernels compute it (its `ggml_v_expf`, used by its softmax and
/// SiLU on x86-64 with AVX-512 or AVX2): a range reduction to x = n·ln 2 + b and a degree-5
/// polynomial in b, every step a single f32 operation or fused multiply-add, so the result is
/// the same bits on every target. Within 2 ulp of e^x (1.5 measured); 0 for -inf, and past
/// |x| ≈ 133 (|n| > 192) 0 or +inf.
pub(crate) fn exp_ggml(x: f32) -> f32 {
    let c = f32::from_bits;
    let shift = c(0x4b40_0000); // 1.5·2^23: adding it rounds to an integer
    let n = fma(x, c(0x3fb8_aa3b), shift) - shift; // round(x·log2 e)
    // b = x - n·ln 2, with ln 2 split into a high and a low part.
    let b = fma(-n, c(0x35bf_be8e), fma(-n, c(0x3f31_7200), x));
    if n.abs() > 192.0 {
        return if n > 0.0 { f32::INFINITY } else { 0.0 };
    }
    let u = b * b;
    let high = fma(fma(c(0x3c07_2010), b, c(0x3d2b_9f17)), u, fma(c(0x3e2a_af33), b, c(0x3eff_fedb)));
    let j = fma(high, u, fma(c(0x3f7f_fff6), b, 1.0));
    // j·2^n rounded once: 2^n built exactly as an f64 (|n| ≤ 192), which also holds the
    // product exactly.
    (f64::from(j) * f64::from_bits(((n as i64 + 1023) as u64) << 52)) as f32
}

#[cfg(test)]
mod tests {
    /// How many of `n` inputs in [-20, 20) (scaled by `scale`) give other bits than `theirs`.
    fn differences(ours: fn(f32) -> f32, theirs: fn(f32) -> f32, scale: f32, n: usize) -> usize {
        (0..n).map(|i| (-20.0 + 40.0 * i as f32 / n as f32) * scale).filter(|&x| ours(x).to_bits() != theirs(x).to_bits()).count()
    }

    #[test]
    fn fma_through_f64_rounds_once() {
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for _ in 0..2_000_000 {
            let r = next();
            // Random bits, and values built to make products and sums cancel and tie.
            let (a, b) = (f32::from_bits(r as u32 & 0xbfff_ffff), f32::from_bits((r >> 32) as u32 & 0xbfff_ffff));
            let c = if r & 1 == 0 { f32::from_bits(next() as u32) } else { -(a * b) * (1.0 + f32::EPSILON * (r >> 60) as f32) };
            let want = libm::fmaf(a, b, c);
            let got = super::fma_via_f64(a, b, c);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "fma({a:e}, {b:e}, {c:e}): {got:e} vs {want:e}");
            checked += 1;
        }
        // Exact ties of the f64 sum, where rounding twice would go wrong.
        for (a, b, c) in [(1.0f32 + f32::EPSILON, 1.0 + 0.5 * f32::EPSILON, 2f32.powi(-60)), (3.0, 1.0 + f32::EPSILON, -(2f32.powi(-50)))] {
            assert_eq!(super::fma_via_f64(a, b, c).to_bits(), libm::fmaf(a, b, c).to_bits());
        }
        assert_eq!(checked, 2_000_000);
    }

    #[test]
    fn ggml_exp_is_close_to_exp() {
        for i in 0..200_000 {
            let x = -100.0 + 200.0 * i as f32 / 200_000.0;
            let (a, b) = (super::exp_ggml(x), super::exp(x));
            assert!(a.to_bits().abs_diff(b.to_bits()) <= 2, "exp({x}): {a} vs {b}");
        }
        assert_eq!(super::exp_ggml(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp_ggml(0.0), 1.0);
    }

    /// On x86_64 Linux the standard library's f32 functions are glibc's, which llama.cpp calls.
    /// `exp` (SiLU, softmax) agrees but for a few in ten thousand; glibc's `tanhf`, `sinf` and
    /// `cosf` are not correctly rounded, so a few percent of their results differ by one bit.
    #[test]
    fn stays_within_a_bit_of_the_c_library() {
        let n = 200_000;
        assert!(differences(super::exp, f32::exp, 1.0, n) * 1000 < n, "exp");
        assert!(differences(super::tanh, f32::tanh, 1.0, n) * 20 < n, "tanh");
        assert!(differences(super::sin, f32::sin, 50.0, n) * 20 < n, "sin");
        assert!(differences(super::cos, f32::cos, 50.0, n) * 20 < n, "cos");
        for i in 0..n {
            let x = -20.0 + 40.0 * i as f32 / n as f32;
            let (ours, theirs) = (super::exp(x), x.exp());
            assert!(ours.to_bits().abs_diff(theirs.to_bits()) <= 1, "exp({x}): {ours} vs {theirs}");
        }
    }
}
