//! WebAssembly SIMD (simd128) versions of the block dot products and activation quantizers of
//! [`super::blocks`].
//!
//! simd128 is chosen at compile time (`.cargo/config.toml` enables it for wasm32), so nothing
//! is detected at run time and the intrinsics are ordinary safe functions here; the only
//! `unsafe` is in the two helpers that move 16 bytes between memory and a vector.
//!
//! Every kernel keeps the scalar code's arithmetic, as the x86 ones do: each block's integer
//! sum is exact in vector lanes (integer addition is associative, so lane order cannot change
//! it), and the blocks are then combined in f32 with the scalar formula, one operation for one
//! operation, in block order. The results are therefore bit-identical to
//! [`super::blocks::dot_scalar`] (short of NaN payloads, should a scale be NaN).
//!
//! WebAssembly has no 8-bit multiply that sums pairs (x86's `maddubs`); its cheapest exact
//! product is `i32x4.dot_i16x8_s`, eight i16 products summed in pairs into four i32s (one
//! `pmaddwd` on x86 hosts). So weights are unpacked straight into i16 lanes, and the
//! activations are widened to i16 once, when they are quantized ([`Activations::qs16`]),
//! rather than once per weight row. An i16 pair sum cannot overflow an i32 lane, so no value
//! range is assumed; the one reliance on [`Activations::quantize`] is that the sums it records
//! (`s` of Q8_0 activations, `bsums` of Q8_K ones) match the values. (The exception, a block
//! so small that its scale overflows, has a zero scale, so its sums do not change the result.)
//!
//! The activation quantizers ([`quantize`]) are bit-identical to
//! [`Activations::quantize_scalar`] for every input, down to NaNs, infinities and subnormal
//! blocks: `f32x4.nearest` rounds half to even and `i32x4.trunc_sat_f32x4_s` saturates and
//! sends NaN to 0, exactly as Rust's `round_ties_even() as i32`.

use core::arch::wasm32::*;

use half::f16;

use super::blocks::{dot_scalar, ActFormat, Activations, Format};
use super::grids::{KVALUES_IQ4NL, KVALUES_MXFP4};
use super::lowbit::{e8m0_half, q3k_scales};

/// The SIMD dot product of one weight row with quantized activations, or `None` when the
/// format has no SIMD kernel (F32 and F16, used for small tensors only) or the activations
/// carry no 16-bit values (they were made by [`Activations::quantize_scalar`]), in which case
/// the caller takes the scalar path.
#[inline]
pub(super) fn dot(format: Format, row: &[u8], act: &Activations) -> Option<f32> {
    if act.qs16.len() != act.qs.len() {
        return None;
    }
    let sum = match format {
        Format::Q4_1 => dot_32::<20, true, 0>(row, act, |b, a| mul4(nibbles(load::<u8, 20, 4>(b)), a)),
        Format::Q8_0 => dot_32::<34, false, 0>(row, act, |b, a| {
            let (lo, hi) = (load::<u8, 34, 2>(b), load::<u8, 34, 18>(b));
            mul4([i16x8_extend_low_i8x16(lo), i16x8_extend_high_i8x16(lo), i16x8_extend_low_i8x16(hi), i16x8_extend_high_i8x16(hi)], a)
        }),
        Format::Q5_0 => dot_32::<22, false, 16>(row, act, |b, a| mul4(five_bits::<22, 2, 6>(b), a)),
        Format::Q4K => Some(dot_q45k::<144, 16, false>(row, act)),
        Format::Q6K => Some(dot_q6k(row, act)),
        Format::Q4_0 => dot_32::<18, false, 8>(row, act, |b, a| mul4(nibbles(load::<u8, 18, 2>(b)), a)),
        Format::Q5_1 => dot_32::<24, true, 0>(row, act, |b, a| mul4(five_bits::<24, 4, 8>(b), a)),
        Format::Q5K => Some(dot_q45k::<176, 48, true>(row, act)),
        Format::IQ4NL => dot_32::<18, false, 0>(row, act, |b, a| mul4(table_nibbles(&KVALUES_IQ4NL, load::<u8, 18, 2>(b)), a)),
        Format::IQ4XS => Some(dot_iq4xs(row, act)),
        Format::MXFP4 => Some(dot_mxfp4(row, act)),
        Format::Q2K => Some(dot_q2k(row, act)),
        Format::Q3K => Some(dot_q3k(row, act)),
        Format::TQ2_0 => Some(dot_tq2(row, act)),
        // Formats without a simd128 kernel: the float ones and the later low-bit ones.
        _ => return None,
    };
    // A row with an infinite or NaN scale (no real model has one) is left to the scalar code.
    Some(sum.unwrap_or_else(|| dot_scalar(format, row, act)))
}

// ----------------------------------------------------------------------------------------
// Moving data.

/// The 16 bytes of `v` from element `AT` on. The bounds are checked when the function is
/// instantiated, so a wrong offset is a compile error and nothing can read out of range.
#[inline(always)]
fn load<T: Copy, const N: usize, const AT: usize>(v: &[T; N]) -> v128 {
    const { assert!((AT * size_of::<T>()) + 16 <= N * size_of::<T>()) };
    // SAFETY: the 16 bytes from element AT on lie inside the array (asserted above), and
    // `v128_load` has no alignment requirement.
    unsafe { v128_load(v.as_ptr().add(AT).cast()) }
}

/// The plain numbers a vector can be split into: every bit pattern is one of them.
trait Lane: Copy + Default {}
impl Lane for i8 {}
impl Lane for i16 {}
impl Lane for i32 {}

/// The lanes of `v`, in order.
#[inline(always)]
fn lanes<T: Lane, const N: usize>(v: v128) -> [T; N] {
    const { assert!(N * size_of::<T>() == 16) };
    let mut out = [T::default(); N];
    // SAFETY: the array is 16 writable bytes (asserted above), `v128_store` has no alignment
    // requirement, and any bytes make valid integers (`Lane`).
    unsafe { v128_store(out.as_mut_ptr().cast(), v) };
    out
}

/// The `LEN` elements of `b` from `AT` on, as an array, bounds checked at compile time.
#[inline(always)]
fn part<T, const N: usize, const AT: usize, const LEN: usize>(b: &[T; N]) -> &[T; LEN] {
    const { assert!(AT + LEN <= N) };
    match b[AT..].first_chunk() {
        Some(part) => part,
        // AT + LEN <= N (asserted above): the compiler drops this arm.
        None => unreachable!(),
    }
}

/// Four finite f16s, the high 16 bits of each i32 lane (the low 16 are ignored), widened to
/// f32 exactly as `half` does, zeros and subnormals included. An infinite or NaN f16 comes out
/// as some finite number: callers find those with [`not_finite`] and leave them to the scalar
/// code (testing for them here, per vector, would cost a fifth of the Q4_1 kernel's time).
#[inline(always)]
fn f16x4_to_f32(h: v128) -> v128 {
    // Sign to bit 31, exponent and mantissa to bits 13..28: read as f32, that is the value
    // times 2^-112, subnormals included, and the product with 2^112 is exact.
    let bits = v128_and(i32x4_shr(h, 3), i32x4_splat(0x8FFF_E000_u32 as i32));
    f32x4_mul(bits, f32x4_splat(f32::from_bits(0x7780_0000)))
}

/// All ones in each 16-bit lane of `h` that holds an infinite or NaN f16 (exponent all ones).
#[inline(always)]
fn not_finite(h: v128) -> v128 {
    let exponent = u16x8_splat(0x7C00);
    i16x8_eq(v128_and(h, exponent), exponent)
}

/// The f16s at bytes `AT`, `AT + 1` of four blocks, in the high 16 bits of four i32 lanes (the
/// low 16 bits zero).
#[inline(always)]
fn f16x4_at<const N: usize, const AT: usize>(blocks: &[[u8; N]; 4]) -> v128 {
    let [b0, b1, b2, b3] = blocks.each_ref().map(|b| (u32::from(u16::from_le_bytes(*part::<u8, N, AT, 2>(b))) << 16) as i32);
    i32x4(b0, b1, b2, b3)
}

/// Bytes 0..4 of four blocks (an f16 scale and an f16 minimum) in four i32 lanes.
#[inline(always)]
fn u32x4_at_0<const N: usize>(blocks: &[[u8; N]; 4]) -> v128 {
    let [b0, b1, b2, b3] = blocks.each_ref().map(|b| i32::from_le_bytes(*part::<u8, N, 0, 4>(b)));
    i32x4(b0, b1, b2, b3)
}

/// The f16 at bytes `AT`, `AT + 1` of a block, widened to f32.
#[inline(always)]
fn f16_at<const N: usize, const AT: usize>(b: &[u8; N]) -> f32 {
    f16::from_le_bytes(*part::<u8, N, AT, 2>(b)).to_f32()
}

// ----------------------------------------------------------------------------------------
// Integer products and sums.

/// Σ w·a over 32 values: `w` four vectors of eight i16 weights, `a` the 32 activations. Four
/// i32 partial sums.
#[inline(always)]
fn mul4(w: [v128; 4], a: &[i16; 32]) -> v128 {
    let lo = i32x4_add(i32x4_dot_i16x8(w[0], load::<i16, 32, 0>(a)), i32x4_dot_i16x8(w[1], load::<i16, 32, 8>(a)));
    let hi = i32x4_add(i32x4_dot_i16x8(w[2], load::<i16, 32, 16>(a)), i32x4_dot_i16x8(w[3], load::<i16, 32, 24>(a)));
    i32x4_add(lo, hi)
}

/// Σ w·a over 16 values, as [`mul4`].
#[inline(always)]
fn mul2(w: [v128; 2], a: &[i16; 16]) -> v128 {
    i32x4_add(i32x4_dot_i16x8(w[0], load::<i16, 16, 0>(a)), i32x4_dot_i16x8(w[1], load::<i16, 16, 8>(a)))
}

/// The sum of four i32 lanes (wrapping, as every integer sum here may without changing the
/// result).
#[inline(always)]
fn hsum(v: v128) -> i32 {
    let v = i32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    i32x4_extract_lane::<0>(i32x4_add(v, i32x4_shuffle::<1, 0, 3, 2>(v, v)))
}

/// Lane `k` of the result is the sum of the four lanes of `v[k]`.
#[inline(always)]
fn hsum_each(v: [v128; 4]) -> v128 {
    // [v0₀+v0₂, v1₀+v1₂, v0₁+v0₃, v1₁+v1₃], likewise for v2 and v3; then the halves meet.
    let a = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[0], v[1]), i32x4_shuffle::<2, 6, 3, 7>(v[0], v[1]));
    let b = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[2], v[3]), i32x4_shuffle::<2, 6, 3, 7>(v[2], v[3]));
    i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(a, b), i32x4_shuffle::<2, 3, 6, 7>(a, b))
}

/// The sixteen bytes of `q` as i16s: bytes 0..8, then 8..16.
#[inline(always)]
fn widen(q: v128) -> [v128; 2] {
    [u16x8_extend_low_u8x16(q), u16x8_extend_high_u8x16(q)]
}

// ----------------------------------------------------------------------------------------
// 32-value formats.

/// The dot product over blocks of `N` bytes, `block` giving the four-lane integer sum of one
/// block with its 32 activations.
///
/// `MIN`: the block has an f16 minimum at byte 2, met by the activation's scaled sum (Q4_1,
/// Q5_1, Q8_1 activations). `OFFSET`: `block` sums the weights before their offset is taken off,
/// so `OFFSET · Σa` is subtracted here, `Σa` being the plain sum Q8_0 activations carry (Q4_0,
/// Q5_0).
///
/// Per block, exactly as the scalar code: `sum += sumi as f32 * (d_w * d_a)` (`+ m_w * s_a`
/// with a minimum). `None` if a scale or minimum is infinite or NaN (see [`f16x4_to_f32`]).
#[inline(always)]
fn dot_32<const N: usize, const MIN: bool, const OFFSET: i32>(row: &[u8], act: &Activations, block: impl Fn(&[u8; N], &[i16; 32]) -> v128) -> Option<f32> {
    let (blocks, _) = row.as_chunks::<N>();
    let (qs, _) = act.qs16.as_chunks::<32>();
    // `s` is read only with a minimum or an offset; otherwise `d` stands in for it to keep one
    // loop shape.
    let s = if MIN || OFFSET != 0 { &act.s } else { &act.d };
    let n = blocks.len().min(qs.len()).min(act.d.len()).min(s.len());
    // `n` is at most each length, so these slices are in range.
    let (blocks, qs, d, s) = (&blocks[..n], &qs[..n], &act.d[..n], &s[..n]);

    let mut sum = 0f32;
    let mut not_finite_scales = u16x8_splat(0);
    // Four blocks at a time: their integer sums and scaling share vectors, and only the
    // in-order f32 accumulation is scalar.
    let (b4, b_rest) = blocks.as_chunks::<4>();
    let (q4, q_rest) = qs.as_chunks::<4>();
    let (d4, d_rest) = d.as_chunks::<4>();
    let (s4, s_rest) = s.as_chunks::<4>();
    for (((b, q), d), s) in b4.iter().zip(q4).zip(d4).zip(s4) {
        let mut sumi = f32x4_convert_i32x4(hsum_each([block(&b[0], &q[0]), block(&b[1], &q[1]), block(&b[2], &q[2]), block(&b[3], &q[3])]));
        if OFFSET != 0 {
            // In f32, which is exact and so the same as the scalar code's i32 arithmetic: the
            // sums are below 2^16 and `s` is a whole number below 2^12 in magnitude. (Except
            // in the one case noted in the module comment, where the scale is zero and any
            // finite sum gives the same zero term, whose sign cannot matter: a sum that starts
            // at +0 is never -0.)
            sumi = f32x4_sub(sumi, f32x4_mul(load::<f32, 4, 0>(s), f32x4_splat(OFFSET as f32)));
        }
        let terms = if MIN {
            let scale_min = u32x4_at_0(b);
            not_finite_scales = v128_or(not_finite_scales, not_finite(scale_min));
            let (dw, mw) = (f16x4_to_f32(i32x4_shl(scale_min, 16)), f16x4_to_f32(scale_min));
            f32x4_add(f32x4_mul(sumi, f32x4_mul(dw, load::<f32, 4, 0>(d))), f32x4_mul(mw, load::<f32, 4, 0>(s)))
        } else {
            let scale = f16x4_at::<N, 0>(b);
            not_finite_scales = v128_or(not_finite_scales, not_finite(scale));
            f32x4_mul(sumi, f32x4_mul(f16x4_to_f32(scale), load::<f32, 4, 0>(d)))
        };
        sum += f32x4_extract_lane::<0>(terms);
        sum += f32x4_extract_lane::<1>(terms);
        sum += f32x4_extract_lane::<2>(terms);
        sum += f32x4_extract_lane::<3>(terms);
    }
    if v128_any_true(not_finite_scales) {
        return None;
    }
    for (((b, q), &d), &s) in b_rest.iter().zip(q_rest).zip(d_rest).zip(s_rest) {
        let sumi = hsum(block(b, q)).wrapping_sub(if OFFSET != 0 { OFFSET.wrapping_mul(s as i32) } else { 0 }) as f32;
        let d = f16_at::<N, 0>(b) * d;
        sum += if MIN { sumi * d + f16_at::<N, 2>(b) * s } else { sumi * d };
    }
    Some(sum)
}

/// 16 packed 4-bit values → 32 i16s in four vectors: the low nibbles of bytes 0..8 and 8..16,
/// then their high nibbles, which is the order of the values in a Q4_0/Q4_1/Q5_0/Q5_1 block.
#[inline(always)]
fn nibbles(q: v128) -> [v128; 4] {
    // Widened first, the high nibble is a plain 16-bit shift away (wasm has no 8-bit shift).
    let [lo, hi] = widen(q);
    let low4 = u16x8_splat(0x0F);
    [v128_and(lo, low4), v128_and(hi, low4), u16x8_shr(lo, 4), u16x8_shr(hi, 4)]
}

/// Each byte's eight bits as eight i16s, in order: 16 where the bit is set, 0 where it is
/// clear; the fifth bits of eight Q5_0/Q5_1 values, ready to join their nibbles. (One 16-byte
/// load from a 4 KiB table that stays in cache, where testing bits in vector lanes costs four
/// operations per eight values.)
static FIFTH_BITS: Aligned<[[u16; 8]; 256]> = {
    let mut table = [[0u16; 8]; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut bit = 0;
        while bit < 8 {
            table[byte][bit] = ((byte >> bit) & 1) as u16 * 0x10;
            bit += 1;
        }
        byte += 1;
    }
    Aligned(table)
};

/// A table whose entries do not straddle cache lines.
#[repr(align(64))]
struct Aligned<T>(T);

/// The 32 unsigned 5-bit values of a Q5_0/Q5_1 block: fifth bits at `QH` (bit k for value
/// k), nibbles at `QS`.
#[inline(always)]
fn five_bits<const N: usize, const QH: usize, const QS: usize>(b: &[u8; N]) -> [v128; 4] {
    let low = nibbles(load::<u8, N, QS>(b));
    let qh = u32::from_le_bytes(*part::<u8, N, QH, 4>(b));
    let high = [0, 8, 16, 24].map(|shift| load::<u16, 8, 0>(&FIFTH_BITS.0[(qh >> shift) as usize & 0xFF]));
    [v128_or(low[0], high[0]), v128_or(low[1], high[1]), v128_or(low[2], high[2]), v128_or(low[3], high[3])]
}

// ----------------------------------------------------------------------------------------
// K-quants (256-value blocks with Q8_K activations).

/// The eight 6-bit scales (bytes 0..8) and eight 6-bit minimums (bytes 8..16) of a Q4_K/Q5_K
/// block's 12 scale bytes, in sub-block order: sub-blocks 0..4 keep theirs in the low six
/// bits of bytes 0..4 (scales) and 4..8 (minimums); sub-blocks 4..8 have their low four bits
/// in the nibbles of bytes 8..12 and their top two bits in the top bits of bytes 0..8.
#[inline(always)]
fn scales_mins_k4(q: &[u8; 12]) -> [u8; 16] {
    let word = |at: usize| u32::from_le_bytes([q[at], q[at + 1], q[at + 2], q[at + 3]]);
    let (w0, w1, w2) = (word(0), word(4), word(8));
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const TOP2: u32 = 0x0303_0303;
    let scales_hi = (w2 & LOW4) | (((w0 >> 6) & TOP2) << 4);
    let mins_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & TOP2) << 4);
    let mut out = [0u8; 16];
    for (o, w) in out.as_chunks_mut::<4>().0.iter_mut().zip([w0 & LOW6, scales_hi, w1 & LOW6, mins_hi]) {
        *o = w.to_le_bytes();
    }
    out
}

/// Q4_K (`N` = 144, values at 16) and Q5_K (`N` = 176, fifth bits at 16, values at 48): f16
/// scale and minimum, eight sub-blocks of 32 with 6-bit scales and minimums. Per block, as the
/// scalar code: `sum += (d_w·d_a) · Σ sc·(w·a) − (dmin_w·d_a) · Σ m·Σa`.
#[inline(always)]
fn dot_q45k<const N: usize, const QS: usize, const FIVE: bool>(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<N>();
    let (qs, _) = act.qs16.as_chunks::<256>();
    let (bsums, _) = act.bsums.as_chunks::<16>();
    let low4 = u16x8_splat(0x0F);
    let bit4 = u16x8_splat(0x10);
    let mut sum = 0f32;
    for (((b, a), bsums), &da) in blocks.iter().zip(qs).zip(bsums).zip(&act.d) {
        let scales_mins = scales_mins_k4(part::<u8, N, 4, 12>(b));
        let (scales, _) = scales_mins.as_chunks::<2>();
        // Fifth bits, one byte per value position l in 0..32 as i16s: bit 2c belongs to value l
        // of chunk c's low sub-block, bit 2c + 1 to its high one; shifted down two per chunk.
        // (Zero for Q4_K, unused.)
        let mut high = if FIVE {
            let (qh0, qh1) = (load::<u8, N, 16>(b), load::<u8, N, 32>(b));
            let ([h0, h1], [h2, h3]) = (widen(qh0), widen(qh1));
            [h0, h1, h2, h3]
        } else {
            [u16x8_splat(0); 4]
        };
        let mut acc = i32x4_splat(0);
        // Each 32 bytes hold two sub-blocks: the low nibbles, then the high nibbles.
        let (chunks, _) = part::<u8, N, QS, 128>(b).as_chunks::<32>();
        let (acts, _) = a.as_chunks::<32>();
        let (acts, _) = acts.as_chunks::<2>();
        for ((q, [a_lo, a_hi]), [sc_lo, sc_hi]) in chunks.iter().zip(acts).zip(scales) {
            let ([w0, w1], [w2, w3]) = (widen(load::<u8, 32, 0>(q)), widen(load::<u8, 32, 16>(q)));
            let w = [w0, w1, w2, w3];
            let mut lo = w.map(|w| v128_and(w, low4));
            let mut hi = w.map(|w| u16x8_shr(w, 4));
            if FIVE {
                for ((lo, hi), &h) in lo.iter_mut().zip(&mut hi).zip(&high) {
                    *lo = v128_or(*lo, v128_and(u16x8_shl(h, 4), bit4));
                    *hi = v128_or(*hi, v128_and(u16x8_shl(h, 3), bit4));
                }
                high = high.map(|h| u16x8_shr(h, 2));
            }
            // Sums at most 32 · 31 · 128, times a scale below 64: far inside i32.
            acc = i32x4_add(acc, i32x4_mul(mul4(lo, a_lo), i32x4_splat(i32::from(*sc_lo))));
            acc = i32x4_add(acc, i32x4_mul(mul4(hi, a_hi), i32x4_splat(i32::from(*sc_hi))));
        }
        // Σ m · (the 32 activations' sum), from the activations' 16-value sums in pairs: the
        // sums narrowed to i16 (at most 16 · 128 in magnitude: exact), each minimum twice.
        let mins = u16x8_extend_high_u8x16(load::<u8, 16, 0>(&scales_mins));
        let sums = [
            i16x8_narrow_i32x4(load::<i32, 16, 0>(bsums), load::<i32, 16, 4>(bsums)),
            i16x8_narrow_i32x4(load::<i32, 16, 8>(bsums), load::<i32, 16, 12>(bsums)),
        ];
        let mins = [i16x8_shuffle::<0, 0, 1, 1, 2, 2, 3, 3>(mins, mins), i16x8_shuffle::<4, 4, 5, 5, 6, 6, 7, 7>(mins, mins)];
        let summ = hsum(i32x4_add(i32x4_dot_i16x8(sums[0], mins[0]), i32x4_dot_i16x8(sums[1], mins[1])));
        let sumi = hsum(acc);
        let d = f16_at::<N, 0>(b) * da;
        let dmin = f16_at::<N, 2>(b) * da;
        sum += d * sumi as f32 - dmin * summ as f32;
    }
    sum
}

/// 16 bytes of 4-bit indices into the 16 signed values of `table` → 32 values as i16s: the
/// low nibbles' values first, then the high nibbles' (IQ4_NL, IQ4_XS, MXFP4 order).
#[inline(always)]
fn table_nibbles(table: &[i8; 16], q: v128) -> [v128; 4] {
    let table = load::<i8, 16, 0>(table);
    let lo = i8x16_swizzle(table, v128_and(q, u8x16_splat(0x0F)));
    let hi = i8x16_swizzle(table, u8x16_shr(q, 4));
    [i16x8_extend_low_i8x16(lo), i16x8_extend_high_i8x16(lo), i16x8_extend_low_i8x16(hi), i16x8_extend_high_i8x16(hi)]
}

/// IQ4_XS: f16 scale, eight 6-bit sub-block scales (less 32), 128 bytes of indices into
/// IQ4_NL's values. Per block, as the scalar code: `sum += d_w · d_a · Σ ls·(w·a)`.
fn dot_iq4xs(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<136>();
    let (qs, _) = act.qs16.as_chunks::<256>();
    let mut sum = 0f32;
    for ((b, a), &da) in blocks.iter().zip(qs).zip(&act.d) {
        let mut acc = i32x4_splat(0);
        let (q, _) = part::<u8, 136, 8, 128>(b).as_chunks::<16>();
        let (a, _) = a.as_chunks::<32>();
        let h = u16::from_le_bytes(*part::<u8, 136, 2, 2>(b));
        let low = part::<u8, 136, 4, 4>(b);
        for (ib, (q, a)) in q.iter().zip(a).enumerate() {
            let ls = i32::from((low[ib / 2] >> (4 * (ib % 2))) & 0x0F) | (i32::from((h >> (2 * ib)) & 3) << 4);
            acc = i32x4_add(acc, i32x4_mul(mul4(table_nibbles(&KVALUES_IQ4NL, load::<u8, 16, 0>(q)), a), i32x4_splat(ls - 32)));
        }
        sum += f16_at::<136, 0>(b) * da * hsum(acc) as f32;
    }
    sum
}

/// The 2-bit fields at bit `2·s` of 32 bytes (two vectors), as i16s: the first 16 values,
/// then the next 16.
#[inline(always)]
fn two_bits(q: [v128; 2], s: u32) -> ([v128; 2], [v128; 2]) {
    let three = u8x16_splat(3);
    (widen(v128_and(u8x16_shr(q[0], 2 * s), three)), widen(v128_and(u8x16_shr(q[1], 2 * s), three)))
}

/// The 2-bit-packed K formats and TQ2_0: per 32-value run `ib` (0..8) of a block, the integer
/// sum of its two 16-value halves, each times its scale from `scales` (`None`: no scale).
/// `q_at(ib)` gives the 32 packed bytes of the run's half block and `high(ib)` what to add to
/// the fields (Q3_K's high bit, as 4, on i16 lanes).
#[inline(always)]
fn runs_2bit(q: [[v128; 2]; 2], a: &[i16; 256], scales: Option<&[i8; 16]>, high: impl Fn(usize) -> ([v128; 2], [v128; 2])) -> v128 {
    let (a, _) = a.as_chunks::<16>();
    let mut acc = i32x4_splat(0);
    for ib in 0..8 {
        let (mut lo, mut hi) = two_bits(q[ib / 4], (ib % 4) as u32);
        let (h_lo, h_hi) = high(ib);
        lo = [i16x8_add(lo[0], h_lo[0]), i16x8_add(lo[1], h_lo[1])];
        hi = [i16x8_add(hi[0], h_hi[0]), i16x8_add(hi[1], h_hi[1])];
        let (p_lo, p_hi) = (mul2(lo, &a[2 * ib]), mul2(hi, &a[2 * ib + 1]));
        acc = match scales {
            Some(sc) => i32x4_add(acc, i32x4_add(i32x4_mul(p_lo, i32x4_splat(i32::from(sc[2 * ib]))), i32x4_mul(p_hi, i32x4_splat(i32::from(sc[2 * ib + 1]))))),
            None => i32x4_add(acc, i32x4_add(p_lo, p_hi)),
        };
    }
    acc
}

/// Q2_K: sixteen 4-bit scales and minimums, 64 bytes of 2-bit values, f16 scale and minimum.
/// Per block, as the scalar code: `sum += (d_a·d)·Σ sc·(w·a) − (d_a·dmin)·Σ m·Σa`.
fn dot_q2k(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<84>();
    let (qs, _) = act.qs16.as_chunks::<256>();
    let (bsums, _) = act.bsums.as_chunks::<16>();
    let zero = [i16x8_splat(0); 2];
    let mut sum = 0f32;
    for (((b, a), bsums), &da) in blocks.iter().zip(qs).zip(bsums).zip(&act.d) {
        let sc = part::<u8, 84, 0, 16>(b);
        let scales: [i8; 16] = std::array::from_fn(|j| (sc[j] & 0x0F) as i8);
        let q = [[load::<u8, 84, 16>(b), load::<u8, 84, 32>(b)], [load::<u8, 84, 48>(b), load::<u8, 84, 64>(b)]];
        let isum = hsum(runs_2bit(q, a, Some(&scales), |_| (zero, zero)));
        let summs: i32 = bsums.iter().zip(sc).map(|(&s, &m)| s * i32::from(m >> 4)).sum();
        let dall = da * f16_at::<84, 80>(b);
        let dmin = da * f16_at::<84, 82>(b);
        sum += dall * isum as f32 - dmin * summs as f32;
    }
    sum
}

/// Q3_K: 32 bytes of high bits, 64 of 2-bit values, twelve bytes of 6-bit scales, f16 scale;
/// values offset by 4. Per block, as the scalar code: `sum += d_w · d_a · Σ sc·(w·a)`.
fn dot_q3k(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<110>();
    let (qs, _) = act.qs16.as_chunks::<256>();
    let (bsums, _) = act.bsums.as_chunks::<16>();
    let mut sum = 0f32;
    for (((b, a), bsums), &da) in blocks.iter().zip(qs).zip(bsums).zip(&act.d) {
        let scales = q3k_scales(part::<u8, 110, 96, 12>(b));
        let hm = [load::<u8, 110, 0>(b), load::<u8, 110, 16>(b)];
        // 4 where bit `ib` of the high-bit byte is set: the value plus 4.
        let high = |ib: usize| {
            let bit = u8x16_splat(1 << ib);
            let four = |h: v128| v128_and(i8x16_eq(v128_and(h, bit), bit), u8x16_splat(4));
            (widen(four(hm[0])), widen(four(hm[1])))
        };
        let q = [[load::<u8, 110, 32>(b), load::<u8, 110, 48>(b)], [load::<u8, 110, 64>(b), load::<u8, 110, 80>(b)]];
        let acc = runs_2bit(q, a, Some(&scales), high);
        // Σ sc·((w + 4)·a) − 4 · Σ sc·(Σa over each 16) = Σ sc·(w·a), exactly.
        let offset: i32 = bsums.iter().zip(&scales).map(|(&s, &sc)| s * i32::from(sc)).sum();
        sum += f16_at::<110, 108>(b) * da * hsum(acc).wrapping_sub(4 * offset) as f32;
    }
    sum
}

/// TQ2_0: 64 bytes of 2-bit values stored plus one, f16 scale. Per block, as the scalar code:
/// `sum += Σ w·a · (d_w · d_a)`.
fn dot_tq2(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<66>();
    let (qs, _) = act.qs16.as_chunks::<256>();
    let (bsums, _) = act.bsums.as_chunks::<16>();
    let zero = [i16x8_splat(0); 2];
    let mut sum = 0f32;
    for (((b, a), bsums), &da) in blocks.iter().zip(qs).zip(bsums).zip(&act.d) {
        let q = [[load::<u8, 66, 0>(b), load::<u8, 66, 16>(b)], [load::<u8, 66, 32>(b), load::<u8, 66, 48>(b)]];
        // Σ (v − 1)·a = Σ v·a − Σ a.
        let sumi = hsum(runs_2bit(q, a, None, |_| (zero, zero))).wrapping_sub(bsums.iter().sum::<i32>());
        sum += sumi as f32 * (f16_at::<66, 64>(b) * da);
    }
    sum
}

/// MXFP4: an E8M0 scale, 16 bytes of indices into its doubled E2M1 values; Q8_0 activations.
/// Per block, as the scalar code: `sum += (d_a · scale) · Σ w·a`.
fn dot_mxfp4(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<17>();
    let (qs, _) = act.qs16.as_chunks::<32>();
    let mut sum = 0f32;
    for ((b, a), &da) in blocks.iter().zip(qs).zip(&act.d) {
        let sumi = hsum(mul4(table_nibbles(&KVALUES_MXFP4, load::<u8, 17, 1>(b)), a));
        sum += da * e8m0_half(b[0]) * sumi as f32;
    }
    sum
}

/// Q6_K: 128 bytes of low nibbles, 64 of top two bits, sixteen i8 scales of 16-value
/// sub-blocks, f16 scale; values offset by 32. Per block, as the scalar code:
/// `sum += d_w · d_a · Σ sc·(w·a)`.
fn dot_q6k(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<210>();
    let (qs, _) = act.qs16.as_chunks::<256>();
    let (bsums, _) = act.bsums.as_chunks::<16>();
    let mut sum = 0f32;
    for (((b, a), bsums), &da) in blocks.iter().zip(qs).zip(bsums).zip(&act.d) {
        let mut acc = i32x4_splat(0);
        // Each half block: 64 bytes of nibbles and 32 of high bits give 128 values in four
        // runs of 32: (nibble bytes, nibble, high-bit pair) = (0..32, low, bits 0-1),
        // (32..64, low, bits 2-3), (0..32, high, bits 4-5), (32..64, high, bits 6-7); each run
        // is two sub-blocks of 16.
        let (ql, _) = part::<u8, 210, 0, 128>(b).as_chunks::<64>();
        let (qh, _) = part::<u8, 210, 128, 64>(b).as_chunks::<32>();
        let (scales, _) = part::<u8, 210, 192, 16>(b).as_chunks::<8>();
        let (acts, _) = a.as_chunks::<128>();
        for (((ql, qh), scales), a) in ql.iter().zip(qh).zip(scales).zip(acts) {
            // Per run, its two sub-blocks' activations and scales.
            let (runs, _) = a.as_chunks::<32>();
            let (run_scales, _) = scales.as_chunks::<2>();
            let runs = || runs.iter().zip(run_scales);
            // The first sub-block of each run, then the second.
            let first = runs().map(|(a, [sc, _])| (part::<i16, 32, 0, 16>(a), *sc as i8));
            acc = i32x4_add(acc, q6k_sixteens([load::<u8, 64, 0>(ql), load::<u8, 64, 32>(ql), load::<u8, 32, 0>(qh)], first));
            let second = runs().map(|(a, [_, sc])| (part::<i16, 32, 16, 16>(a), *sc as i8));
            acc = i32x4_add(acc, q6k_sixteens([load::<u8, 64, 16>(ql), load::<u8, 64, 48>(ql), load::<u8, 32, 16>(qh)], second));
        }
        // Σ sc·((w + 32)·a) − 32 · Σ sc·(Σa over the sub-block) = Σ sc·(w·a), exactly. The
        // 16-value sums narrow to i16 exactly (at most 16 · 128 in magnitude).
        let scales = load::<u8, 210, 192>(b);
        let sums = [
            i16x8_narrow_i32x4(load::<i32, 16, 0>(bsums), load::<i32, 16, 4>(bsums)),
            i16x8_narrow_i32x4(load::<i32, 16, 8>(bsums), load::<i32, 16, 12>(bsums)),
        ];
        let offset = i32x4_add(i32x4_dot_i16x8(i16x8_extend_low_i8x16(scales), sums[0]), i32x4_dot_i16x8(i16x8_extend_high_i8x16(scales), sums[1]));
        let sumi = hsum(i32x4_sub(acc, i32x4_shl(offset, 5)));
        sum += f16_at::<210, 208>(b) * da * sumi as f32;
    }
    sum
}

/// One sub-block of 16 from each of a Q6_K half block's four runs: `q` the 16 nibble bytes of
/// runs 0/2, of runs 1/3, and the 16 high-bit bytes; `subs` the four sub-blocks' activations
/// and scales. Σ sc·(w·a) with the unsigned values (the offset is left to the caller), four
/// i32 partial sums.
#[inline(always)]
fn q6k_sixteens<'a>(q: [v128; 3], subs: impl Iterator<Item = (&'a [i16; 16], i8)>) -> v128 {
    let [n0, n1, h] = q;
    let (low4, bits45) = (u8x16_splat(0x0F), u8x16_splat(0x30));
    // The values of each run, as bytes (two fewer widenings than building them in i16s). The
    // shifts are of 16-bit lanes (wasm has no 8-bit shift); each mask keeps the bits that came
    // from within the same byte.
    let runs = [
        v128_or(v128_and(n0, low4), v128_and(i16x8_shl(h, 4), bits45)),
        v128_or(v128_and(n1, low4), v128_and(i16x8_shl(h, 2), bits45)),
        v128_or(v128_and(u16x8_shr(n0, 4), low4), v128_and(h, bits45)),
        v128_or(v128_and(u16x8_shr(n1, 4), low4), v128_and(u16x8_shr(h, 2), bits45)),
    ];
    // Each sum is at most 16 · 63 · 128, times a scale of at most 128: far inside i32.
    let mut acc = i32x4_splat(0);
    for (run, (a, sc)) in runs.into_iter().zip(subs) {
        acc = i32x4_add(acc, i32x4_mul(mul2(widen(run), a), i32x4_splat(i32::from(sc))));
    }
    acc
}

// ----------------------------------------------------------------------------------------
// Quantizing activations.

/// Quantizes `x` into `act` exactly as [`Activations::quantize_scalar`] does, and also fills
/// [`Activations::qs16`]; returns `false` (with `act` untouched) when the format is plain f32
/// (a copy), in which case the caller takes the scalar path.
pub(super) fn quantize(act: &mut Activations, x: &[f32], format: ActFormat) -> bool {
    if matches!(format, ActFormat::F32 | ActFormat::BF16) {
        return false;
    }
    act.clear();
    match format {
        ActFormat::Q8K => quantize_q8k(act, x),
        _ => quantize_q8(act, x, format == ActFormat::Q8_1),
    }
    true
}

/// The largest magnitude among the values, NaNs skipped as `f32::max` and the scalar
/// comparisons skip them.
#[inline(always)]
fn amax(v: &[[f32; 4]]) -> f32 {
    let mut m = f32x4_splat(0.0);
    for v in v {
        // `pmax(m, x)` is `m < x ? x : m`: a NaN `x` leaves the running maximum.
        m = f32x4_pmax(m, f32x4_abs(load::<f32, 4, 0>(v)));
    }
    // No NaNs remain, so the order of the lanes does not matter.
    let m = f32x4_pmax(m, i32x4_shuffle::<2, 3, 0, 1>(m, m));
    f32x4_extract_lane::<0>(f32x4_pmax(m, i32x4_shuffle::<1, 0, 3, 2>(m, m)))
}

/// `(v * scale).round_ties_even() as i32` for four values, with Rust's cast semantics
/// (saturating; NaN to 0).
#[inline(always)]
fn round_to_i32(v: v128, scale: v128) -> v128 {
    i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(v, scale)))
}

/// The low byte of each i32 lane, sign-extended (`as i8 as i32`).
#[inline(always)]
fn low_byte(q: v128) -> v128 {
    i32x4_shr(i32x4_shl(q, 24), 24)
}

/// Appends 32 values (eight vectors of four sign-extended bytes) to `qs` and `qs16`.
#[inline(always)]
fn push_values(act: &mut Activations, q: [v128; 8]) -> [v128; 4] {
    // In -128..=127, the saturating narrowings are exact.
    let wide = [0, 2, 4, 6].map(|k| i16x8_narrow_i32x4(q[k], q[k + 1]));
    for w in wide {
        act.qs16.extend_from_slice(&lanes::<i16, 8>(w));
    }
    act.qs.extend_from_slice(&lanes::<i8, 16>(i8x16_narrow_i16x8(wide[0], wide[1])));
    act.qs.extend_from_slice(&lanes::<i8, 16>(i8x16_narrow_i16x8(wide[2], wide[3])));
    wide
}

/// Q8_0 (`q8_1` false) and Q8_1 activations, as the scalar quantizer: per 32 values, scale
/// `amax / 127`, values `round(v · 127 / amax)`, and the plain or scaled sum.
fn quantize_q8(act: &mut Activations, x: &[f32], q8_1: bool) {
    let (blocks, _) = x.as_chunks::<32>();
    act.qs.reserve(blocks.len() * 32);
    act.qs16.reserve(blocks.len() * 32);
    for block in blocks {
        let (v, _) = block.as_chunks::<4>();
        let amax = amax(v);
        let d = amax / 127.0;
        let id = f32x4_splat(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let mut q = [i32x4_splat(0); 8];
        for (q, v) in q.iter_mut().zip(v) {
            *q = round_to_i32(load::<f32, 4, 0>(v), id);
        }
        // Wrapping i32 additions, like the scalar sum: they wrap only for blocks so small that
        // `127 / amax` overflows and the values saturate, and their scale is then zero.
        let sum = hsum(q.iter().fold(i32x4_splat(0), |s, &q| i32x4_add(s, q)));
        push_values(act, q.map(low_byte));
        act.d.push(f16::from_f32(d).to_f32());
        act.s.push(if q8_1 { f16::from_f32(d * sum as f32).to_f32() } else { sum as f32 });
    }
}

/// Q8_K activations, as the scalar quantizer: per 256 values, the first value of largest
/// magnitude `max` sets `iscale = -127 / max`, values `min(round(iscale · v), 127)`, the sums
/// of each 16 and the scale `1 / iscale`.
fn quantize_q8k(act: &mut Activations, x: &[f32]) {
    let (blocks, _) = x.as_chunks::<256>();
    act.qs.reserve(blocks.len() * 256);
    act.qs16.reserve(blocks.len() * 256);
    for block in blocks {
        let (v4, _) = block.as_chunks::<4>();
        let amax = amax(v4);
        if amax == 0.0 {
            act.qs.extend(std::iter::repeat_n(0i8, 256));
            act.qs16.extend(std::iter::repeat_n(0i16, 256));
            act.bsums.extend(std::iter::repeat_n(0, 16));
            act.d.push(0.0);
            continue;
        }
        // The first value whose magnitude is `amax` (there is one: `amax` is the magnitude of
        // one of them).
        let mut max = amax;
        for v in v4 {
            let hits = i32x4_bitmask(f32x4_eq(f32x4_abs(load::<f32, 4, 0>(v)), f32x4_splat(amax)));
            if hits != 0 {
                // A lane of four: the mask keeps the index provably in range.
                max = v[(hits.trailing_zeros() & 3) as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let scale = f32x4_splat(iscale);
        let (v32, _) = block.as_chunks::<32>();
        // Two runs of 32 at a time, which make four 16-value sums (a sum of 16 values of at
        // most 128 in magnitude fits the i16 lanes).
        let (pairs, _) = v32.as_chunks::<2>();
        for pair in pairs {
            let mut sums = [i32x4_splat(0); 4];
            for (v, sums) in pair.iter().zip(sums.as_chunks_mut::<2>().0) {
                let (v, _) = v.as_chunks::<4>();
                let mut q = [i32x4_splat(0); 8];
                for (q, v) in q.iter_mut().zip(v) {
                    *q = low_byte(i32x4_min(round_to_i32(load::<f32, 4, 0>(v), scale), i32x4_splat(127)));
                }
                let wide = push_values(act, q);
                sums[0] = i32x4_extadd_pairwise_i16x8(i16x8_add(wide[0], wide[1]));
                sums[1] = i32x4_extadd_pairwise_i16x8(i16x8_add(wide[2], wide[3]));
            }
            act.bsums.extend_from_slice(&lanes::<i32, 4>(hsum_each(sums)));
        }
        act.d.push(1.0 / iscale);
    }
}
