//! F32 weights (the routers of mixtures of experts, small models' f32 files): eight rows' dot
//! products at once, each summed in order exactly as the scalar reference sums it.
//!
//! A single f32 dot product summed in order cannot be vectorised without changing its rounding:
//! every addition waits for the one before. Eight rows can: lane `r` of one vector holds row
//! `r`'s running sum, and each step multiplies and adds one value of every row. The rows are
//! read eight values at a time and transposed in registers so that each vector holds one
//! column of the eight rows.

use std::arch::x86_64::*;

/// The dot products of eight F32 rows (little-endian bytes, `x.len()` values each) with `x`,
/// each the sequential sum `((-0 + w₀x₀) + w₁x₁) + …` of `blocks::dot_scalar`, or `None` when
/// this CPU lacks AVX2 (the caller then takes the scalar path).
pub(in crate::kernels) fn dot_rows8(rows: [&[u8]; 8], x: &[f32]) -> Option<[f32; 8]> {
    if !super::available() || rows.iter().any(|r| r.len() != x.len() * 4) {
        return None;
    }
    // SAFETY: `available` confirmed AVX2; every row holds `x.len()` values (checked above).
    Some(unsafe { dot_rows8_avx2(rows, x) })
}

#[target_feature(enable = "avx2")]
unsafe fn dot_rows8_avx2(rows: [&[u8]; 8], x: &[f32]) -> [f32; 8] {
    let n = x.len();
    let mut sum = _mm256_set1_ps(-0.0);
    let mut k = 0;
    while k + 8 <= n {
        // SAFETY: values k..k + 8 lie inside each row and inside `x` (k + 8 ≤ n).
        let v: [__m256; 8] = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(rows[r].as_ptr().add(4 * k).cast()) });
        let columns = transpose(v);
        for (j, column) in columns.iter().enumerate() {
            // Rounded product, then rounded sum: no fused multiply-add, as in the scalar code.
            sum = _mm256_add_ps(sum, _mm256_mul_ps(*column, _mm256_set1_ps(x[k + j])));
        }
        k += 8;
    }
    let mut out = [0f32; 8];
    // SAFETY: `out` holds eight f32s.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    for (r, o) in out.iter_mut().enumerate() {
        for (w, a) in rows[r][4 * k..].chunks_exact(4).zip(&x[k..]) {
            *o += f32::from_le_bytes([w[0], w[1], w[2], w[3]]) * a;
        }
    }
    out
}

/// The 8×8 transpose: vector `j` of the result holds value `j` of each input vector.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose(v: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}
