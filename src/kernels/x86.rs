//! x86_64 SIMD versions of the block dot products of [`super::blocks`], on AVX2 (+FMA, F16C),
//! chosen at run time.
//!
//! Every kernel keeps the scalar code's arithmetic: each block's integer sum is computed
//! exactly in vector lanes (integer addition is associative, so the lane order cannot change
//! it), and the blocks are then combined in f32 with the scalar formula, one operation for one
//! operation (no fused multiply-adds), in block order. The results are therefore bit-identical
//! to [`super::blocks::dot_scalar`] (short of NaN payloads, should a scale be NaN). The price
//! is a serial chain of f32 additions, one per block; the 32-value kernels add up one group of
//! eight blocks while the next group's integer work runs, which hides most of it.
//!
//! The integer products use `maddubs` (unsigned bytes × signed bytes, adjacent pairs summed to
//! i16). Unsigned weights go in as they are: Q4_1, Q5_1 and the K-quants; Q4_0, Q5_0 and Q6_K
//! too, before their offset, which is taken off afterwards through the activations' sums
//! (`offset · Σa`). Q8_0 weights go in as their absolute value, their sign moved onto the
//! activation. No i16 pair sum can saturate: the largest is 2 · 128 · 127 = 32512.
//!
//! The activation quantizers ([`quantize`]) are here too, bit-identical to
//! [`Activations::quantize_scalar`] for every input, down to NaNs, infinities and subnormal
//! blocks (where Rust's saturating float-to-int casts and truncating `as i8` are reproduced).
//!
//! The kernels rely on activations as [`Activations::quantize`] makes them: values in
//! -127..=127 (both of llama.cpp's 8-bit quantizers scale the largest magnitude to 127; with
//! Q8_0 weights, a -128 would lose its sign against a negative weight), and the sums it
//! records (`s` of Q8_0 activations, `bsums` of Q8_K ones) matching the values. (The one
//! exception, a block so small that its scale overflows, has a zero scale, so its sums do not
//! change the result.)

use std::arch::x86_64::*;
use std::sync::OnceLock;

use half::f16;

use super::blocks::{ActFormat, Activations, Format};

pub(super) mod floats;
mod iq;

/// Whether this CPU has everything the kernels here are compiled for (AVX2, FMA, F16C).
/// Detected once: `dot` runs for every weight row, so it must cost one load and one branch.
fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
}

/// The products of one weight row with several activation rows into `out`, each of the row's
/// blocks decoded once for them all (the codebook formats), bit-identical to [`dot`] row by
/// row; `false` when the format has no such kernel or this CPU lacks AVX2/FMA/F16C.
pub(super) fn dot_rows(format: Format, row: &[u8], acts: &[Activations], out: &mut [f32]) -> bool {
    // SAFETY: the kernels need AVX2, FMA and F16C, which `available` confirms first.
    available() && unsafe { iq::dot_rows(format, row, acts, out) }
}

/// Fills [`Activations::runs_split`] from the Q8_K values of `act` where the AVX-512 IQ4_XS
/// kernel would read it (this CPU has AVX-512 VBMI).
pub(super) fn split_runs(act: &mut Activations) {
    if !super::avx512::vbmi() {
        return;
    }
    act.runs_split.clear();
    for runs in act.qs.chunks_exact(128) {
        for half in 0..2 {
            for run in runs.chunks_exact(32) {
                act.runs_split.extend_from_slice(&run[16 * half..16 * half + 16]);
            }
        }
    }
}

/// Weight rows [`dot_tiles`] takes at once, one per 32-bit lane of a 512-bit vector.
pub(super) const TILE_ROWS: usize = 16;

/// The products of [`TILE_ROWS`] weight rows (`rows`, whole rows one after the other) with
/// several activation rows into `out` (`out[r·m + i]`), rows side by side in vector lanes
/// (IQ1_S, IQ2_XXS), bit-identical to [`dot`]; `false` when the format has no such kernel or
/// this CPU lacks AVX-512 VBMI and VNNI.
pub(super) fn dot_tiles(format: Format, rows: &[u8], acts: &[Activations], out: &mut [f32]) -> bool {
    iq::dot_tiles(format, rows, acts, out)
}

/// The SIMD dot product of one weight row with quantized activations, or `None` when this CPU
/// lacks AVX2/FMA/F16C or the format has no SIMD kernel (F32 and F16, used for small tensors
/// only), in which case the caller takes the scalar path.
#[inline]
pub(super) fn dot(format: Format, row: &[u8], act: &Activations) -> Option<f32> {
    if !available() {
        return None;
    }
    // SAFETY: each of these functions needs AVX2, FMA and F16C, which `available` has just
    // confirmed the CPU has. They are otherwise ordinary safe functions.
    unsafe {
        Some(match format {
            Format::Q8_0 => dot_q8_0(row, act),
            Format::Q5_0 => dot_q5_0(row, act),
            Format::Q4K => dot_q45k::<144, 16, false>(row, act),
            // SAFETY: `available` confirmed AVX-512 F, BW and VNNI.
            Format::Q6K if super::avx512::available() => dot_q6k_avx512(row, act),
            Format::Q6K => dot_q6k(row, act),
            Format::Q4_1 => dot_q4_1(row, act),
            Format::Q4_0 => dot_q4_0(row, act),
            Format::Q5_1 => dot_q5_1(row, act),
            Format::Q5K => dot_q45k::<176, 48, true>(row, act),
            // The later low-bit formats, in their own file; the float ones (small tensors only)
            // have no kernel.
            _ => return iq::dot(format, row, act),
        })
    }
}

/// [`dot`] of each of the rows `rows` (whole rows of `row_bytes` bytes, one after the other)
/// with one activation row, into `out`, in one call for the K-quants that decoding multiplies
/// in place (a mixture of experts' experts): a row of Qwen3-Coder's down experts is three
/// blocks, and a call per row set its constants up again for each. `false` when the format has
/// no such loop or this CPU lacks what its kernel needs.
pub(super) fn dot_each(format: Format, rows: &[u8], row_bytes: usize, act: &Activations, out: &mut [f32]) -> bool {
    if !available() || row_bytes == 0 {
        return false;
    }
    // SAFETY: `available` confirmed AVX2, FMA and F16C, and `avx512::available` AVX-512 F, BW
    // and VNNI.
    unsafe {
        match format {
            Format::Q4K => dot_q4k_each(rows, row_bytes, act, out),
            Format::Q6K if super::avx512::available() => dot_q6k_avx512_each(rows, row_bytes, act, out),
            _ => return false,
        }
    }
    true
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4k_each(rows: &[u8], row_bytes: usize, act: &Activations, out: &mut [f32]) {
    for (row, out) in rows.chunks_exact(row_bytes).zip(out) {
        *out = dot_q45k::<144, 16, false>(row, act);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_q6k_avx512_each(rows: &[u8], row_bytes: usize, act: &Activations, out: &mut [f32]) {
    for (row, out) in rows.chunks_exact(row_bytes).zip(out) {
        *out = dot_q6k_avx512(row, act);
    }
}

// ----------------------------------------------------------------------------------------
// Reading blocks.

/// The `LEN` elements of `b` from `AT` on, as an array. The bounds are checked when the
/// function is instantiated, so a wrong offset is a compile error and nothing can panic.
#[inline(always)]
fn part<T, const N: usize, const AT: usize, const LEN: usize>(b: &[T; N]) -> &[T; LEN] {
    const { assert!(AT + LEN <= N) };
    // SAFETY: elements AT..AT + LEN lie inside the N-element array (asserted above), and an
    // array of T has T's alignment.
    unsafe { &*b.as_ptr().add(AT).cast::<[T; LEN]>() }
}

/// The f16 at bytes `AT`, `AT + 1` of a block, widened to f32 (exactly, as `half` does).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at<const N: usize, const AT: usize>(b: &[u8; N]) -> f32 {
    let bits = u16::from_le_bytes(*part::<u8, N, AT, 2>(b));
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The f16s at bytes `AT`, `AT + 1` of eight blocks, widened to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x8_at<const N: usize, const AT: usize>(blocks: &[[u8; N]; 8]) -> __m256 {
    // Gathered in general-purpose registers, whose ports the vector loop leaves idle
    // (inserting eight words into a vector one by one costs more vector work).
    let bits = |k: usize| u64::from(u16::from_le_bytes(*part::<u8, N, AT, 2>(&blocks[k])));
    let lo = bits(0) | bits(1) << 16 | bits(2) << 32 | bits(3) << 48;
    let hi = bits(4) | bits(5) << 16 | bits(6) << 32 | bits(7) << 48;
    _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
}

/// 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8(b: &[u8; 32]) -> __m256i {
    // SAFETY: the array is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x16(b: &[u8; 16]) -> __m128i {
    // SAFETY: the array is 16 readable bytes; the load has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// 32 activations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i8(a: &[i8; 32]) -> __m256i {
    // SAFETY: the array is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

/// 8 i32s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i32(v: &[i32; 8]) -> __m256i {
    // SAFETY: the array is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// 8 f32s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32(v: &[f32; 8]) -> __m256 {
    // SAFETY: the array is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// 16 packed 4-bit values → 32 bytes: the low nibbles first, then the high nibbles, which is
/// the order of the values in a Q4_0/Q4_1/Q5_0/Q5_1 block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(q: __m128i) -> __m256i {
    // A 16-bit shift moves each byte's high nibble down; the mask drops what came across.
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), _mm256_set1_epi8(0x0F))
}

/// A 32-bit mask → 32 bytes, byte `k` all ones where bit `k` is set (the fifth bits of
/// Q5_0/Q5_1).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits_to_bytes(bits: u32) -> __m256i {
    // Byte k takes byte k / 8 of the mask (the shuffle works within 128-bit lanes, and each
    // lane has all four bytes), then tests bit k % 8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

// ----------------------------------------------------------------------------------------
// Integer products and sums.

/// Σ w·a of signed bytes, as eight i32 partial sums. `a` must be in -127..=127 (see the
/// module comment); `w` may be any byte.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_i8(w: __m256i, a: __m256i) -> __m256i {
    // |w| read as unsigned (so -128 is 128) times a with w's sign; zero where w is zero.
    let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w));
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Σ w·a of unsigned bytes `w` (at most 63, so no i16 pair can saturate) and signed `a`, as
/// eight i32 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_u8(w: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
}

/// The sum of eight i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Lane `k` of the result is the sum of the eight lanes of `v[k]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_each(v: [__m256i; 8]) -> __m256i {
    // Within each 128-bit half, two rounds of pairwise sums leave [v0 v1 v2 v3] and [v4 v5 v6
    // v7] (each half's share); adding the halves finishes the sums.
    let a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(a, b), _mm256_permute2x128_si256::<0x31>(a, b))
}

/// A Q8_K block's sixteen 16-value sums as i16s, in order (they are at most 16 · 128 in
/// magnitude, so the narrowing cannot saturate).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bsums_i16(bsums: &[i32; 16]) -> __m256i {
    let packed = _mm256_packs_epi32(load_i32(part::<i32, 16, 0, 8>(bsums)), load_i32(part::<i32, 16, 8, 8>(bsums)));
    // The pack interleaves 64-bit quarters (0..4, 8..12 | 4..8, 12..16); put them back.
    _mm256_permute4x64_epi64::<0b11_01_10_00>(packed)
}

// ----------------------------------------------------------------------------------------
// 32-value formats.

/// The dot product over blocks of `N` bytes, `block` giving the eight-lane integer sum of one
/// block with its 32 activations.
///
/// `MIN`: the block has an f16 minimum at byte 2, met by the activation's scaled sum (Q4_1,
/// Q5_1, Q8_1 activations). `OFFSET`: `block` sums the weights before their offset is taken off
/// (unsigned bytes are cheaper to multiply), so `OFFSET · Σa` is subtracted here, `Σa` being
/// the plain sum Q8_0 activations carry (Q4_0, Q5_0).
///
/// Per block, exactly as the scalar code: `sum += sumi as f32 * (d_w * d_a)` (`+ m_w * s_a`
/// with a minimum).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_32<const N: usize, const MIN: bool, const OFFSET: i32>(row: &[u8], act: &Activations, block: impl Fn(&[u8; N], __m256i) -> __m256i) -> f32 {
    let (blocks, _) = row.as_chunks::<N>();
    let (qs, _) = act.qs.as_chunks::<32>();
    // `s` is read only with a minimum or an offset; otherwise `d` stands in for it to keep one
    // loop shape.
    let s = if MIN || OFFSET != 0 { &act.s } else { &act.d };
    let n = blocks.len().min(qs.len()).min(act.d.len()).min(s.len());
    // `n` is at most each length, so these slices are in range.
    let (blocks, qs, d, s) = (&blocks[..n], &qs[..n], &act.d[..n], &s[..n]);

    let mut sum = 0f32;
    // Eight blocks at a time: the eight integer sums and their scaling share vectors, and
    // only the in-order f32 accumulation is scalar.
    let (b8, b_rest) = blocks.as_chunks::<8>();
    let (q8, q_rest) = qs.as_chunks::<8>();
    let (d8, d_rest) = d.as_chunks::<8>();
    let (s8, s_rest) = s.as_chunks::<8>();
    let mut pending: Option<[f32; 8]> = None;
    for (((b, q), d), s) in b8.iter().zip(q8).zip(d8).zip(s8) {
        let sums: [__m256i; 8] = std::array::from_fn(|k| block(&b[k], load_i8(&q[k])));
        let mut sumi = hsum_each(sums);
        if OFFSET != 0 {
            // The sums are whole numbers far below 2^24, so the conversion is exact.
            sumi = _mm256_sub_epi32(sumi, _mm256_mullo_epi32(_mm256_cvtps_epi32(load_f32(s)), _mm256_set1_epi32(OFFSET)));
        }
        let sumi = _mm256_cvtepi32_ps(sumi);
        let mut terms = _mm256_mul_ps(sumi, _mm256_mul_ps(f16x8_at::<N, 0>(b), load_f32(d)));
        if MIN {
            terms = _mm256_add_ps(terms, _mm256_mul_ps(f16x8_at::<N, 2>(b), load_f32(s)));
        }
        // SAFETY: eight f32 lanes are eight f32s; every bit pattern is a valid f32.
        let terms: [f32; 8] = unsafe { std::mem::transmute::<__m256, [f32; 8]>(terms) };
        if let Some(p) = pending.replace(terms) {
            for t in p {
                sum += t;
            }
        }
    }
    if let Some(p) = pending {
        for t in p {
            sum += t;
        }
    }
    for (((b, q), &d), &s) in b_rest.iter().zip(q_rest).zip(d_rest).zip(s_rest) {
        // Wrapping, as the vector lanes do: only for activations too small to quantize (see
        // `quantize_q8`) can `s` be out of range, and then their scale is zero.
        let sumi = hsum(block(b, load_i8(q))).wrapping_sub(if OFFSET != 0 { OFFSET.wrapping_mul(s as i32) } else { 0 }) as f32;
        let d = f16_at::<N, 0>(b) * d;
        sum += if MIN { sumi * d + f16_at::<N, 2>(b) * s } else { sumi * d };
    }
    sum
}

/// Q8_0: f16 scale, 32 signed bytes.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], act: &Activations) -> f32 {
    dot_32::<34, false, 0>(row, act, |b, a| mul_i8(load_u8(part::<u8, 34, 2, 32>(b)), a))
}

/// Q4_0: f16 scale, 32 nibbles offset by 8.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(row: &[u8], act: &Activations) -> f32 {
    dot_32::<18, false, 8>(row, act, |b, a| mul_u8(nibbles(load_u8x16(part::<u8, 18, 2, 16>(b))), a))
}

/// Q4_1: f16 scale and minimum, 32 nibbles.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(row: &[u8], act: &Activations) -> f32 {
    dot_32::<20, true, 0>(row, act, |b, a| mul_u8(nibbles(load_u8x16(part::<u8, 20, 4, 16>(b))), a))
}

/// The 32 unsigned 5-bit values of a Q5_0/Q5_1 block: fifth bits at `QH`, nibbles at `QS`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn five_bits<const N: usize, const QH: usize, const QS: usize>(b: &[u8; N]) -> __m256i {
    let high = bits_to_bytes(u32::from_le_bytes(*part::<u8, N, QH, 4>(b)));
    _mm256_or_si256(nibbles(load_u8x16(part::<u8, N, QS, 16>(b))), _mm256_and_si256(high, _mm256_set1_epi8(0x10)))
}

/// Q5_0: f16 scale, 32 fifth bits, 32 nibbles; values offset by 16.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0(row: &[u8], act: &Activations) -> f32 {
    dot_32::<22, false, 16>(row, act, |b, a| mul_u8(five_bits::<22, 2, 6>(b), a))
}

/// Q5_1: f16 scale and minimum, 32 fifth bits, 32 nibbles.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1(row: &[u8], act: &Activations) -> f32 {
    dot_32::<24, true, 0>(row, act, |b, a| mul_u8(five_bits::<24, 4, 8>(b), a))
}

// ----------------------------------------------------------------------------------------
// K-quants (256-value blocks with Q8_K activations).

/// The eight 6-bit scales and eight 6-bit minimums of a Q4_K/Q5_K block's 12 scale bytes, one
/// per byte, in sub-block order: sub-blocks 0..4 keep theirs in the low six bits of bytes 0..4
/// (scales) and 4..8 (minimums); sub-blocks 4..8 have their low four bits in the nibbles of
/// bytes 8..12 and their top two bits in the top bits of bytes 0..8.
#[inline]
fn scales_mins_k4(q: &[u8; 12]) -> (u64, u64) {
    let word = |at: usize| u32::from_le_bytes([q[at], q[at + 1], q[at + 2], q[at + 3]]);
    let (w0, w1, w2) = (word(0), word(4), word(8));
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const TOP2: u32 = 0x0303_0303;
    let scales_hi = (w2 & LOW4) | (((w0 >> 6) & TOP2) << 4);
    let mins_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & TOP2) << 4);
    (u64::from(w0 & LOW6) | u64::from(scales_hi) << 32, u64::from(w1 & LOW6) | u64::from(mins_hi) << 32)
}

/// Q4_K (`N` = 144, values at 16) and Q5_K (`N` = 176, fifth bits at 16, values at 48): f16
/// scale and minimum, eight sub-blocks of 32 with 6-bit scales and minimums. Per block, as the
/// scalar code: `sum += (d_w·d_a) · Σ sc·(w·a) − (dmin_w·d_a) · Σ m·Σa`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q45k<const N: usize, const QS: usize, const FIVE: bool>(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<N>();
    let (qs, _) = act.qs.as_chunks::<256>();
    let (bsums, _) = act.bsums.as_chunks::<16>();
    let low4 = _mm256_set1_epi8(0x0F);
    let bit4 = _mm256_set1_epi8(0x10);
    let mut sum = 0f32;
    for (((b, a), bsums), &da) in blocks.iter().zip(qs).zip(bsums).zip(&act.d) {
        let (scales, mins) = scales_mins_k4(part::<u8, N, 4, 12>(b));
        // The eight scales as i16s, in both 128-bit halves, so an in-lane byte shuffle can
        // spread any one of them over a whole vector.
        let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
        // Fifth bits: bit 2c of byte l belongs to value l of chunk c's low sub-block, bit
        // 2c + 1 to its high one; shifted down by two per chunk. (Zero for Q4_K, unused.)
        let mut high = if FIVE { load_u8(part::<u8, N, 16, 32>(b)) } else { _mm256_setzero_si256() };
        let mut acc = _mm256_setzero_si256();
        // Each 32 bytes hold two sub-blocks: the low nibbles, then the high nibbles.
        let (chunks, _) = part::<u8, N, QS, 128>(b).as_chunks::<32>();
        let (acts, _) = a.as_chunks::<64>();
        for (c, (q, a)) in chunks.iter().zip(acts).enumerate() {
            let q = load_u8(q);
            let mut lo = _mm256_and_si256(q, low4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4);
            if FIVE {
                // 16-bit shifts; the mask keeps bit 4 of each byte, which came from the same
                // byte's bit 0 (resp. 1).
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16::<4>(high), bit4));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16::<3>(high), bit4));
                high = _mm256_srli_epi16::<2>(high);
            }
            // Scale j (an i16: bytes 2j, 2j + 1) in all sixteen i16 lanes.
            let scale = |j: i16| _mm256_shuffle_epi8(scales, _mm256_set1_epi16(((2 * j + 1) << 8) | (2 * j)));
            // Pair sums are at most 2 · 31 · 128, and times a scale below 64 they still fit the
            // i32 lanes `madd` produces.
            let lo = _mm256_maddubs_epi16(lo, load_i8(part::<i8, 64, 0, 32>(a)));
            let hi = _mm256_maddubs_epi16(hi, load_i8(part::<i8, 64, 32, 32>(a)));
            let c = c as i16;
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(lo, scale(2 * c)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(hi, scale(2 * c + 1)));
        }
        // Σ m · (the 32 activations' sum), from the activations' 16-value sums in pairs.
        let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(_mm_cvtsi64_si128(mins as i64), _mm_cvtsi64_si128(mins as i64)));
        let summ = hsum(_mm256_madd_epi16(bsums_i16(bsums), mins));
        let sumi = hsum(acc);
        let d = f16_at::<N, 0>(b) * da;
        let dmin = f16_at::<N, 2>(b) * da;
        sum += d * sumi as f32 - dmin * summ as f32;
    }
    sum
}

/// Q6_K: 128 bytes of low nibbles, 64 of top two bits, sixteen i8 scales of 16-value
/// sub-blocks, f16 scale; values offset by 32. Per block, as the scalar code:
/// `sum += d_w · d_a · Σ sc·(w·a)`.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6k(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<210>();
    let (qs, _) = act.qs.as_chunks::<256>();
    let (bsums, _) = act.bsums.as_chunks::<16>();
    let low4 = _mm256_set1_epi8(0x0F);
    let bits45 = _mm256_set1_epi8(0x30);
    let mut sum = 0f32;
    for (((b, a), bsums), &da) in blocks.iter().zip(qs).zip(bsums).zip(&act.d) {
        let scale_bytes = load_u8x16(part::<u8, 210, 192, 16>(b));
        // The sixteen scales as i16s; each half block's eight in both 128-bit halves, so an
        // in-lane byte shuffle can put one scale in the low half and the next in the high half.
        let scales16 = _mm256_cvtepi8_epi16(scale_bytes);
        let scales = [_mm256_permute4x64_epi64::<0b01_00_01_00>(scales16), _mm256_permute4x64_epi64::<0b11_10_11_10>(scales16)];
        // Scales 2k and 2k + 1 of a half block (i16s: bytes 4k..4k + 4) over the low and high
        // eight i16 lanes.
        let scale_pair = |scales: __m256i, k: i64| {
            // Four times the i16 whose low byte is byte `j`.
            let i16_at = |j: i64| (((j + 1) << 8) | j) * 0x0001_0001_0001_0001;
            _mm256_shuffle_epi8(scales, _mm256_set_epi64x(i16_at(4 * k + 2), i16_at(4 * k + 2), i16_at(4 * k), i16_at(4 * k)))
        };
        let mut acc = _mm256_setzero_si256();
        // Each half block: 64 bytes of nibbles and 32 of high bits give 128 values in four
        // runs of 32: (nibble bytes, nibble, high-bit pair) = (0..32, low, bits 0-1),
        // (32..64, low, bits 2-3), (0..32, high, bits 4-5), (32..64, high, bits 6-7).
        let halves = [
            (load_u8(part::<u8, 210, 0, 32>(b)), load_u8(part::<u8, 210, 32, 32>(b)), load_u8(part::<u8, 210, 128, 32>(b))),
            (load_u8(part::<u8, 210, 64, 32>(b)), load_u8(part::<u8, 210, 96, 32>(b)), load_u8(part::<u8, 210, 160, 32>(b))),
        ];
        let (acts, _) = a.as_chunks::<128>();
        for ((scales, (q0, q1, qh)), acts) in scales.into_iter().zip(halves).zip(acts) {
            let (acts, _) = acts.as_chunks::<32>();
            // Each mask keeps bits 4-5 of every byte, which the 16-bit shift brought from the
            // same byte.
            let values = [
                _mm256_or_si256(_mm256_and_si256(q0, low4), _mm256_and_si256(_mm256_slli_epi16::<4>(qh), bits45)),
                _mm256_or_si256(_mm256_and_si256(q1, low4), _mm256_and_si256(_mm256_slli_epi16::<2>(qh), bits45)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q0), low4), _mm256_and_si256(qh, bits45)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q1), low4), _mm256_and_si256(_mm256_srli_epi16::<2>(qh), bits45)),
            ];
            for (k, (w, a)) in values.into_iter().zip(acts).enumerate() {
                // Unsigned 0..63 here; the offset of 32 is taken off below. Pair sums are at
                // most 2 · 63 · 128, and the scaled sums stay far inside i32.
                let pairs = _mm256_maddubs_epi16(w, load_i8(a));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, scale_pair(scales, k as i64)));
            }
        }
        // Σ sc·((w + 32)·a) − 32 · Σ sc·(Σa over the sub-block) = Σ sc·(w·a), exactly.
        let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_bytes), bsums_i16(bsums));
        let sumi = hsum(_mm256_sub_epi32(acc, _mm256_slli_epi32::<5>(offset)));
        sum += f16_at::<210, 208>(b) * da * sumi as f32;
    }
    sum
}

/// [`dot_q6k`] with AVX-512 VNNI: 64 values a vector (a half block's 64 nibble bytes give
/// their low nibbles, then their high ones, each with two bits of the 32 high-bit bytes
/// shifted into place per 256-bit half), one `vpdpbusd` of the unsigned 0..63 values with the
/// activations, each i32 lane (four values of one 16-value sub-block) times its sub-block's
/// scale. The integer sum is the AVX2 kernel's and the f32 arithmetic the same: bit-identical.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_q6k_avx512(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<210>();
    let (qs, _) = act.qs.as_chunks::<256>();
    let (bsums, _) = act.bsums.as_chunks::<16>();
    let low4 = _mm512_set1_epi8(0x0F);
    let bits45 = _mm512_set1_epi8(0x30);
    // The high bits' shifts into bits 4-5: values 0..32 of a half block take bits 0-1 (left by
    // 4), 32..64 bits 2-3 (left by 2), 64..96 bits 4-5, 96..128 bits 6-7 (right by 2).
    let left = _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4);
    let right = _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0);
    // Lane l of the products of values 64c..64c + 64 belongs to sub-block 4c + l / 4.
    let sub_block = |c: i32| _mm512_set_epi32(4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c, 4 * c, 4 * c, 4 * c);
    let chunks = [sub_block(0), sub_block(1), sub_block(2), sub_block(3)];
    let mut sum = 0f32;
    for (((b, a), bsums), &da) in blocks.iter().zip(qs).zip(bsums).zip(&act.d) {
        let scales = _mm512_cvtepi8_epi32(load_u8x16(part::<u8, 210, 192, 16>(b)));
        let mut acc = _mm512_setzero_si512();
        for h in 0..2 {
            // SAFETY: bytes 64h..64h + 64 (nibbles) and 128 + 32h..160 + 32h (high bits) lie
            // inside the 210-byte block; values 128h..128h + 128 inside the 256.
            let (q, high, a0, a1) = unsafe {
                let high = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * h).cast());
                (
                    _mm512_loadu_si512(b.as_ptr().add(64 * h).cast()),
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(high), high),
                    _mm512_loadu_si512(a.as_ptr().add(128 * h).cast()),
                    _mm512_loadu_si512(a.as_ptr().add(128 * h + 64).cast()),
                )
            };
            // Each mask keeps bits 4-5 of every byte, which the 16-bit shift brought from the
            // same byte.
            let low = _mm512_or_si512(_mm512_and_si512(q, low4), _mm512_and_si512(_mm512_sllv_epi64(high, left), bits45));
            let top = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(q), low4), _mm512_and_si512(_mm512_srlv_epi64(high, right), bits45));
            for (c, (w, a)) in [(2 * h, (low, a0)), (2 * h + 1, (top, a1))] {
                let products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a);
                acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(products, _mm512_permutexvar_epi32(chunks[c], scales)));
            }
        }
        // Σ sc·((w + 32)·a) − 32 · Σ sc·(Σa over the sub-block) = Σ sc·(w·a), exactly.
        // SAFETY: the block's 16 sums, 64 bytes.
        let offset = _mm512_mullo_epi32(scales, unsafe { _mm512_loadu_si512(bsums.as_ptr().cast()) });
        let sumi = _mm512_reduce_add_epi32(_mm512_sub_epi32(acc, _mm512_slli_epi32::<5>(offset)));
        sum += f16_at::<210, 208>(b) * da * sumi as f32;
    }
    sum
}

// ----------------------------------------------------------------------------------------
// Quantizing activations.

/// Quantizes `x` into `act` exactly as [`Activations::quantize_scalar`] does, returning
/// `false` (with `act` untouched) when this CPU lacks AVX2/FMA/F16C or the format is plain f32
/// (a copy), in which case the caller takes the scalar path.
pub(super) fn quantize(act: &mut Activations, x: &[f32], format: ActFormat) -> bool {
    if !available() || matches!(format, ActFormat::F32 | ActFormat::BF16) {
        return false;
    }
    act.clear();
    // SAFETY: both functions need AVX2, FMA and F16C, which `available` has just confirmed.
    unsafe {
        match format {
            ActFormat::Q8K => quantize_q8k(act, x),
            _ => quantize_q8(act, x, format == ActFormat::Q8_1),
        }
    }
    true
}

/// Eight f32s, the sign bit cleared (`f32::abs`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn abs_ps(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

/// The largest of eight lanes, none of them NaN.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// The largest magnitude among the values, NaNs skipped as `f32::max` and the scalar
/// comparisons skip them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn amax(v: &[[f32; 8]]) -> f32 {
    let mut m = _mm256_setzero_ps();
    for v in v {
        // `maxps` returns its second operand when either is NaN: the running maximum.
        m = _mm256_max_ps(abs_ps(load_f32(v)), m);
    }
    hmax(m)
}

/// `(v * scale).round_ties_even() as i32` for eight values, with Rust's cast semantics
/// (saturating; NaN to 0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_to_i32(v: __m256, scale: __m256) -> __m256i {
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v, scale));
    // `cvtps` turns NaN and everything out of range into i32::MIN: flip that to i32::MAX
    // where the value is at least 2^31, and clear it where it is NaN.
    let too_big = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(r, _mm256_set1_ps(2_147_483_648.0)));
    let number = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
    _mm256_and_si256(_mm256_xor_si256(_mm256_cvtps_epi32(r), too_big), number)
}

/// The low bytes of 32 i32s (`as i8`), in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn low_bytes(q: [__m256i; 4]) -> __m256i {
    // Masked to 0..=255 first, the saturating packs cannot saturate, and so truncate.
    let q = q.map(|q| _mm256_and_si256(q, _mm256_set1_epi32(0xFF)));
    let bytes = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3]));
    // The packs work within 128-bit halves, leaving 4-byte runs in the order 0 2 4 6 1 3 5 7.
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Appends 32 bytes to `qs`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn push_bytes(qs: &mut Vec<i8>, bytes: __m256i) {
    // SAFETY: 32 byte lanes are 32 bytes; every bit pattern is a valid i8.
    qs.extend_from_slice(&unsafe { std::mem::transmute::<__m256i, [i8; 32]>(bytes) });
}

/// Q8_0 (`q8_1` false) and Q8_1 activations, as the scalar quantizer: per 32 values, scale
/// `amax / 127`, values `round(v · 127 / amax)`, and the plain or scaled sum.
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8(act: &mut Activations, x: &[f32], q8_1: bool) {
    let (blocks, _) = x.as_chunks::<32>();
    act.qs.reserve(blocks.len() * 32);
    for block in blocks {
        let amax = amax(block.as_chunks::<8>().0);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let v = [part::<f32, 32, 0, 8>(block), part::<f32, 32, 8, 8>(block), part::<f32, 32, 16, 8>(block), part::<f32, 32, 24, 8>(block)];
        let q = v.map(|v| round_to_i32(load_f32(v), id));
        // Wrapping i32 additions, like the scalar sum: they wrap only for blocks so small that
        // `127 / amax` overflows and the values saturate, and their scale is then zero.
        let sum = hsum(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        push_bytes(&mut act.qs, low_bytes(q));
        act.d.push(f16::from_f32(d).to_f32());
        act.s.push(if q8_1 { f16::from_f32(d * sum as f32).to_f32() } else { sum as f32 });
    }
}

/// The sums of each 16 signed bytes of four 32-byte vectors, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sums16(v: [__m256i; 4]) -> __m256i {
    // Biased by 128 to unsigned, each 8 bytes sum into a 64-bit lane (`sad` against zero);
    // the sum, at most 8 · 255, sits in the low i32 with a zero above it.
    let s = v.map(|v| _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8(i8::MIN)), _mm256_setzero_si256()));
    // Pairwise sums twice: the low 128-bit half holds the first 16-sums of v[0..4], the high
    // half the second ones.
    let sums = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    let sums = _mm256_permutevar8x32_epi32(sums, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_sub_epi32(sums, _mm256_set1_epi32(16 * 128))
}

/// Q8_K activations, as the scalar quantizer: per 256 values, the first value of largest
/// magnitude `max` sets `iscale = -127 / max`, values `min(round(iscale · v), 127)`, the sums
/// of each 16 and the scale `1 / iscale`.
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8k(act: &mut Activations, x: &[f32]) {
    let (blocks, _) = x.as_chunks::<256>();
    act.qs.reserve(blocks.len() * 256);
    for block in blocks {
        let (v8, _) = block.as_chunks::<8>();
        let amax = amax(v8);
        if amax == 0.0 {
            act.qs.extend(std::iter::repeat_n(0i8, 256));
            act.bsums.extend(std::iter::repeat_n(0, 16));
            act.d.push(0.0);
            continue;
        }
        // The first value whose magnitude is `amax` (there is one: `amax` is the magnitude of
        // one of them).
        let mut max = amax;
        for v in v8 {
            let hits = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs_ps(load_f32(v)), _mm256_set1_ps(amax)));
            if hits != 0 {
                // A lane of eight: the mask keeps the index provably in range.
                max = v[(hits.trailing_zeros() & 7) as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let scale = _mm256_set1_ps(iscale);
        let (v32, _) = block.as_chunks::<32>();
        let mut bytes = [_mm256_setzero_si256(); 8];
        for (bytes, v) in bytes.iter_mut().zip(v32) {
            let v = [part::<f32, 32, 0, 8>(v), part::<f32, 32, 8, 8>(v), part::<f32, 32, 16, 8>(v), part::<f32, 32, 24, 8>(v)];
            *bytes = low_bytes(v.map(|v| _mm256_min_epi32(round_to_i32(load_f32(v), scale), _mm256_set1_epi32(127))));
            push_bytes(&mut act.qs, *bytes);
        }
        for four in [[bytes[0], bytes[1], bytes[2], bytes[3]], [bytes[4], bytes[5], bytes[6], bytes[7]]] {
            // SAFETY: eight i32 lanes are eight i32s; every bit pattern is a valid i32.
            act.bsums.extend_from_slice(&unsafe { std::mem::transmute::<__m256i, [i32; 8]>(sums16(four)) });
        }
        act.d.push(1.0 / iscale);
    }
}
