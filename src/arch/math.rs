//! The transcendental functions of the forward pass, the same to the last bit on every target.
//!
//! The standard library calls the platform's C library natively and another implementation in
//! wasm, and their last bits differ now and then; a last bit can flip a greedy choice. Here
//! each function is computed in f64 by the `libm` crate (one implementation everywhere) and
//! rounded once to f32, which gives the correctly rounded result but in vanishingly rare
//! cases — the results llama.cpp's C library (glibc) gives too, where a plain f32 `libm::expf`
//! is off by one bit often enough to change SmolLM2's greedy text. `exp`, called for every
//! attention score, is written out here in plain f64 operations to the same results, fast and
//! vectorisable; `tests::libm_exp` keeps the libm form it is checked against.

/// ln 2 with its last 11 significand bits cleared (42 bits remain), so that k·`LN2_HI` is exact
/// for any |k| < 2^11 and x − k·`LN2_HI` is exact for the x and k of [`exp`].
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fefa_3800);
/// ln 2 − `LN2_HI` rounded to f64 (computed with mpmath): the true remainder, not the low bits of
/// `LN_2`, which would leave out ln 2 − `LN_2` ≈ 2.3e-17 and put up to 4e-15 of error into r.
const LN2_LO: f64 = f64::from_bits(0x3d2e_f357_93c7_6730);
/// 1.5·2^52: adding it to an f64 of magnitude below 2^51 rounds it to an integer, which then
/// sits in the low bits of the sum.
const ROUND_SHIFT: f64 = 6_755_399_441_055_744.0;
/// 1/2!, 1/3!, …, 1/13!, each correctly rounded (n! ≤ 13! is exact in f64): the Taylor series of
/// (e^r − 1 − r)/r². Cut after r^13/13!, the first term left out, r^14/14!, is below 5e-18 for
/// |r| ≤ 0.35 — a fiftieth of an f64 ulp of e^r.
const EXP_TAYLOR: [f64; 12] = [
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5_040.0,
    1.0 / 40_320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
    1.0 / 6_227_020_800.0,
];

/// e^x, computed in f64 and rounded once to f32: the same bits as `libm::exp(f64::from(x)) as
/// f32` (the results of glibc's `expf`, which llama.cpp calls), but written out so that it is
/// fast and a loop over it vectorises.
///
/// Plain IEEE f64 operations only — no fused multiply-add, no table, no branch — so the bits are
/// the same on every target. Before the rounding to f32 this is within 0.66 f64 ulp of e^x
/// (measured against mpmath) and libm within 1 ulp (its bound), far finer than f32 needs: the two
/// could round to different f32 values only where e^x lies within an f64 ulp or so of a point
/// halfway between two f32 values, and no f32 input in [-104, 89] does (see the tests).
/// x above 88.72… gives +inf, below −103.97… gives 0, NaN gives NaN.
#[inline]
pub(crate) fn exp(x: f32) -> f32 {
    // e^-110 and e^90 are normal f64 values that round to f32 0 and +inf: clamping is all that
    // ±inf and the far ends need, and it keeps 2^k below a normal f64. NaN passes through.
    let x = f64::from(x).clamp(-110.0, 90.0);
    // x = k·ln 2 + r with k = round(x·log2 e), so e^x = 2^k·e^r and |r| ≤ ln 2 / 2 (a hair more
    // where the rounded product lands on the other side of a half).
    let shifted = x * std::f64::consts::LOG2_E + ROUND_SHIFT;
    let k = shifted - ROUND_SHIFT;
    // r = r_hi + r_lo (Cody–Waite). k·LN2_HI has at most 8 + 42 bits, and once k ≠ 0 (|x| >
    // 0.34, last bit of the f32 x 2^-25 or coarser) x − k·LN2_HI is a multiple of 2^-42 below
    // 1/2: both exact, so r_hi carries no rounding error.
    let r_hi = x - k * LN2_HI;
    let r_lo = -(k * LN2_LO);
    let r = r_hi + r_lo;
    // e^r − 1 − r = r²·p(r), p of degree 11 evaluated in Estrin's form — pairs of terms, then
    // pairs of pairs — which keeps its chain of dependent operations 8 long rather than Horner's
    // 22 (the scalar callers wait on it). Separate multiplies and adds: a fused multiply-add
    // would round differently where one exists and not at all in wasm.
    let c = &EXP_TAYLOR;
    let (r2, pair) = (r * r, |i: usize| c[i] + c[i + 1] * r);
    let r4 = r2 * r2;
    let (low, mid, high) = (pair(0) + r2 * pair(2), pair(4) + r2 * pair(6), pair(8) + r2 * pair(10));
    let tail = r2 * (low + r4 * (mid + r4 * high));
    // 1 + r_hi is exact (a multiple of 2^-42 below 2; for k = 0 and |x| < 2^-29 it is not, but
    // then e^x is nowhere near an f32 halfway point), so the large error is the last sum's half
    // ulp; the tail's own rounding (|tail| < 0.07) adds less than a quarter ulp.
    let e_r = (1.0 + r_hi) + (r_lo + tail);
    // 2^k, a normal f64 given the clamp (|k| ≤ 159): the biased exponent k + 1023 is the low 12
    // bits of shifted + 1023, read without converting to an integer.
    let scale = f64::from_bits((shifted.to_bits() + 1023) << 52);
    // Exact (a power of two, no f64 underflow); the one rounding is to f32, subnormals included.
    (e_r * scale) as f32
}

/// Replaces each value by [`exp`] of it. The loop vectorises (f64 lanes on packed registers, four
/// or eight values per instruction), which a softmax over a row of scores wants.
pub(crate) fn exp_in_place(values: &mut [f32]) {
    for value in values.iter_mut() {
        *value = exp(*value);
    }
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

    /// The reference [`super::exp`] replaced: the f64 `libm` exp rounded to f32.
    fn libm_exp(x: f32) -> f32 {
        libm::exp(f64::from(x)) as f32
    }

    /// The inputs among `xs` where [`super::exp`] and [`libm_exp`] differ (NaN = NaN).
    fn libm_mismatches(xs: impl Iterator<Item = f32>) -> Vec<f32> {
        xs.filter(|&x| {
            let (ours, theirs) = (super::exp(x), libm_exp(x));
            ours.to_bits() != theirs.to_bits() && !(ours.is_nan() && theirs.is_nan())
        })
        .collect()
    }

    /// Every f32 from `from` to `to` (same sign, `from` nearer zero), in order of their bits.
    fn every_f32(from: f32, to: f32) -> impl Iterator<Item = f32> {
        (from.to_bits()..=to.to_bits()).map(f32::from_bits)
    }

    /// 26 million inputs over [-110, 90], none of which may differ from libm: random values
    /// (uniform in value, and random f32 bits for the tiny magnitudes), every f32 in [-1, -0.5]
    /// and [2, 4], around the overflow edge and through the subnormal results. The exhaustive sweep
    /// (`exp_matches_libm_on_every_f32`) measured what is left: 0 in 2.2·10^9. Run in Node too
    /// (`make wasm-test`'s runner, `--lib math`), where it shows the same bits on wasm32.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn exp_matches_libm() {
        let mut next = crate::xorshift(0x2545_f491_4f6c_dd1d);
        let uniform = (0..4_000_000).map(|_| -110.0 + 200.0 * (next() >> 40) as f32 / (1u64 << 24) as f32);
        assert_eq!(libm_mismatches(uniform), Vec::<f32>::new());
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
        let random_bits = (0..4_000_000).map(|_| f32::from_bits(next() as u32)).filter(|x| (-110.0..90.0).contains(x));
        assert_eq!(libm_mismatches(random_bits), Vec::<f32>::new());
        assert_eq!(libm_mismatches(every_f32(-0.5, -1.0)), Vec::<f32>::new()); // 8.4 million
        assert_eq!(libm_mismatches(every_f32(80.0, 90.0)), Vec::<f32>::new()); // 1.3 million, past overflow
        assert_eq!(libm_mismatches(every_f32(-87.0, -104.5)), Vec::<f32>::new()); // 2.3 million, subnormal results
        assert_eq!(libm_mismatches(every_f32(2.0, 4.0)), Vec::<f32>::new()); // 8.4 million

        // The ends: 88.722832 (0x42b17217) is the largest input with a finite result, -103.972076
        // (0xc2cff1b4) the smallest with a non-zero one (the smallest subnormal).
        let (last_finite, last_nonzero) = (f32::from_bits(0x42b1_7217), f32::from_bits(0xc2cf_f1b4));
        assert_eq!(super::exp(last_finite), libm_exp(last_finite));
        assert!(super::exp(last_finite).is_finite());
        assert_eq!(super::exp(last_finite.next_up()), f32::INFINITY);
        assert_eq!(super::exp(last_nonzero), f32::from_bits(1));
        assert_eq!(super::exp(last_nonzero.next_down()), 0.0);
        for (x, want) in [(0.0, 1.0), (-0.0, 1.0), (f32::INFINITY, f32::INFINITY), (f32::NEG_INFINITY, 0.0), (f32::MAX, f32::INFINITY), (f32::MIN, 0.0), (f32::from_bits(1), 1.0), (f32::MIN_POSITIVE, 1.0), (1.0, std::f32::consts::E)] {
            assert_eq!(super::exp(x).to_bits(), want.to_bits(), "exp({x:e})");
        }
        assert!(super::exp(f32::NAN).is_nan() && super::exp(-f32::NAN).is_nan());
    }

    /// Every f32 in [-104, 89] (2.2·10^9 inputs, 17 s in release; 0 mismatches when written):
    /// run with `cargo test --release --lib exp_matches_libm_on_every_f32 -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn exp_matches_libm_on_every_f32() {
        let mismatches = [every_f32(-0.0, -104.0), every_f32(0.0, 89.0)].into_iter().flat_map(libm_mismatches).collect::<Vec<_>>();
        for &x in &mismatches {
            eprintln!("exp({x:e}) [{:#010x}]: {:e} vs libm {:e}", x.to_bits(), super::exp(x), libm_exp(x));
        }
        eprintln!("{} mismatches", mismatches.len());
        assert_eq!(mismatches, Vec::<f32>::new());
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn exp_in_place_is_exp_of_each_value() {
        let mut next = crate::xorshift(0x1234_5678_9abc_def1);
        // 100 010 values, not a multiple of the vector width: the loop's remainder is covered too.
        let mut xs: Vec<f32> = (0..100_003).map(|_| -110.0 + 200.0 * (next() >> 40) as f32 / (1u64 << 24) as f32).collect();
        xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 88.8, -104.0]);
        let mut values = xs.clone();
        super::exp_in_place(&mut values);
        for (x, v) in xs.iter().zip(&values) {
            let want = super::exp(*x);
            assert!(v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()), "exp({x:e}): {v:e} vs {want:e}");
        }
    }

    /// Nanoseconds per value over a million values in [-20, 0] (softmax inputs): libm's exp,
    /// [`super::exp`] called through a pointer (one value at a time), and [`super::exp_in_place`].
    /// Run with `cargo test --release --lib exp_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn exp_speed() {
        use std::hint::black_box;
        let n = 1_000_000;
        let xs: Vec<f32> = (0..n).map(|i| -20.0 * i as f32 / n as f32).collect();
        let time = |name: &str, run: &dyn Fn(&mut [f32])| {
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let mut values = xs.clone();
                let start = std::time::Instant::now();
                run(black_box(&mut values));
                best = best.min(start.elapsed().as_secs_f64());
                black_box(&values);
            }
            eprintln!("{name}: {:.2} ns per value", best * 1e9 / n as f64);
        };
        let old: fn(f32) -> f32 = black_box(libm_exp);
        let new: fn(f32) -> f32 = black_box(super::exp);
        time("libm exp (old)", &|v| v.iter_mut().for_each(|x| *x = old(*x)));
        time("exp, one value at a time", &|v| v.iter_mut().for_each(|x| *x = new(*x)));
        time("exp_in_place", &|v| super::exp_in_place(v));
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
