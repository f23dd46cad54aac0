//! AVX2 kernels of the formats of [`super::super::lowbit`]: Q2_K, Q3_K, the IQ family, the
//! ternary TQ1_0/TQ2_0, IQ4_NL and MXFP4.
//!
//! As in the parent module, each block's integer sums are exact in vector lanes and the f32
//! arithmetic per block is the scalar code's, operation for operation, so the results are
//! bit-identical to [`super::super::lowbit`]'s.
//!
//! The grid formats gather their codebook entries (8 bytes or 4 bytes each) into vectors,
//! move the weights' signs onto the activations (`sign_epi8`), multiply the unsigned grid
//! magnitudes with `maddubs` (pair sums at most 2 · 62 · 127, no saturation) and apply their
//! scales with `madd` into i32 lanes. IQ1_S/IQ1_M's grid values are -1, 0 or 1: `sign_epi8`
//! multiplies by them exactly. The 4-bit non-linear formats look their values up with a byte
//! shuffle (`shuffle_epi8` of the 16-entry table) and multiply as signed bytes (pair sums at
//! most 2 · 127 · 127).

use super::*;
use crate::kernels::grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KVALUES_IQ4NL, KVALUES_MXFP4};
use crate::kernels::lowbit::{e8m0_half, iq1m_scale, IQ1_DELTA};
#[cfg(doc)]
use crate::kernels::lowbit::q3k_scales;

/// The kernel of `format`, if it has one here.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot(format: Format, row: &[u8], act: &Activations) -> Option<f32> {
    Some(match format {
        Format::Q2K => dot_q2k(row, act),
        Format::Q3K => dot_q3k(row, act),
        Format::IQ2XXS if super::super::avx512::vbmi() => one(row, act, dot_iq2xxs_avx512),
        Format::IQ2XXS => one(row, act, dot_iq2xxs),
        Format::IQ2XS if super::super::avx512::vbmi() => one(row, act, dot_iq2xs_avx512),
        Format::IQ2XS => one(row, act, dot_iq2xs),
        Format::IQ2S if super::super::avx512::vbmi() => one(row, act, dot_iq2s_avx512),
        Format::IQ2S => one(row, act, dot_iq2s),
        Format::IQ3XXS if super::super::avx512::vbmi() => one(row, act, dot_iq3xxs_avx512),
        Format::IQ3XXS => one(row, act, dot_iq3xxs),
        Format::IQ3S if super::super::avx512::vbmi() => one(row, act, dot_iq3s_avx512),
        Format::IQ3S => one(row, act, dot_iq3s),
        // SAFETY: `available` confirmed AVX-512 F, BW and VNNI.
        Format::IQ1S if super::super::avx512::available() => unsafe { dot_iq1s_avx512(row, act) },
        Format::IQ1S => one(row, act, dot_iq1s),
        Format::IQ1M => dot_iq1m(row, act),
        // SAFETY: `vbmi` confirmed AVX-512 F, BW, VNNI and VBMI.
        Format::IQ4XS if super::super::avx512::vbmi() => unsafe { dot_iq4xs_avx512_one(row, act) },
        Format::IQ4XS => dot_iq4xs(row, act),
        Format::IQ4NL => {
            // As Q4_0 with a table: the parent's 32-value driver, f16 scale at byte 0.
            let values = table(&KVALUES_IQ4NL);
            dot_32::<18, false, 0>(row, act, |b, a| mul_i8(_mm256_shuffle_epi8(values, nibbles(load_u8x16(part::<u8, 18, 2, 16>(b)))), a))
        }
        Format::MXFP4 => dot_mxfp4(row, act),
        Format::TQ2_0 => dot_tq2(row, act),
        Format::TQ1_0 => dot_tq1(row, act),
        _ => return None,
    })
}

use super::super::blocks::half;

/// The Q8_K activations of each block: 256 values, 16 sums, scale.
#[inline(always)]
fn q8k(act: &Activations) -> impl Iterator<Item = ((&[i8; 256], &[i32; 16]), &f32)> {
    let (qs, _) = act.qs.as_chunks::<256>();
    let (bsums, _) = act.bsums.as_chunks::<16>();
    qs.iter().zip(bsums).zip(&act.d)
}

/// The 32 activations of sub-block `ib` (0..8) of a Q8_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn a32(a: &[i8; 256], ib: usize) -> __m256i {
    let (chunks, _) = a.as_chunks::<32>();
    // `ib` is below 8 wherever this is called; `get` keeps a slip from panicking.
    chunks.get(ib).map_or(_mm256_setzero_si256(), |c| load_i8(c))
}


/// The eight signs of each 7-bit sign code (`KSIGNS_IQ2XS`: the eighth makes the count of
/// minus signs even) as bytes, 1 or -1, for `sign_epi8`. Derived from the codes' definition;
/// `signs_follow_ksigns` checks it against the table.
static SIGN_BYTES: [u64; 128] = {
    let mut table = [0u64; 128];
    let mut code = 0;
    while code < 128 {
        let bits = code as u32 | ((code as u32).count_ones() & 1) << 7;
        let mut j = 0;
        while j < 8 {
            table[code] |= if bits >> j & 1 != 0 { 0xFF } else { 0x01 } << (8 * j);
            j += 1;
        }
        code += 1;
    }
    table
};

/// The ±1 bytes of four 7-bit sign codes, for 32 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sign_codes(codes: [u16; 4]) -> __m256i {
    let s = |l: usize| SIGN_BYTES[usize::from(codes[l] & 127)] as i64;
    _mm256_set_epi64x(s(3), s(2), s(1), s(0))
}

/// The ±1 bytes of four 7-bit sign codes in `aux`'s low 28 bits (IQ2_XXS, IQ3_XXS).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ksigns4(aux: u32) -> __m256i {
    sign_codes([aux as u16, (aux >> 7) as u16, (aux >> 14) as u16, (aux >> 21) as u16])
}

/// The ±1 bytes of 32 sign bits (bit `k` set: byte `k` is -1).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sign_bits(bits: u32) -> __m256i {
    _mm256_or_si256(bits_to_bytes(bits), _mm256_set1_epi8(1))
}

/// The scale vectors of the eight 32-value runs of a block with sixteen i8 scales (the bytes
/// of `scales`), one per 16 values: run `k`'s first scale in the low eight i16 lanes, its
/// second in the high eight (the order of `maddubs`'s pair sums of 32 values).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_pairs(scales: __m128i) -> [__m256i; 8] {
    let s16 = _mm256_cvtepi8_epi16(scales);
    // Each half block's eight i16s in both 128-bit halves; then run k's two scales (i16s 2k,
    // 2k + 1 of its half: bytes 4k..4k + 4) broadcast over the low and the high half.
    let halves = [_mm256_permute4x64_epi64::<0b01_00_01_00>(s16), _mm256_permute4x64_epi64::<0b11_10_11_10>(s16)];
    let i16_at = |j: i64| (((j + 1) << 8) | j) * 0x0001_0001_0001_0001;
    std::array::from_fn(|ib| {
        let k = (ib % 4) as i64;
        _mm256_shuffle_epi8(halves[ib / 4], _mm256_set_epi64x(i16_at(4 * k + 2), i16_at(4 * k + 2), i16_at(4 * k), i16_at(4 * k)))
    })
}

/// Four 8-byte grid entries.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn grid8<T: Copy>(g: [&[T; 8]; 4], to_u64: impl Fn(&[T; 8]) -> u64) -> __m256i {
    _mm256_set_epi64x(to_u64(g[3]) as i64, to_u64(g[2]) as i64, to_u64(g[1]) as i64, to_u64(g[0]) as i64)
}

#[inline(always)]
fn u64_of(g: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*g)
}

#[inline(always)]
fn u64_of_i8(g: &[i8; 8]) -> u64 {
    u64::from_le_bytes(g.map(|v| v as u8))
}

/// Eight 4-byte grid entries.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn grid4(g: [&[u8; 4]; 8]) -> __m256i {
    let e = |k: usize| i32::from_le_bytes(*g[k]);
    _mm256_set_epi32(e(7), e(6), e(5), e(4), e(3), e(2), e(1), e(0))
}

#[inline(always)]
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The IQ2/IQ3 grid formats: `prep` reads what a block's runs share (their scales), and
/// `run` gives a block's 32-value run `ib` as (grid magnitudes, ±1 signs, the i16 scale
/// vector of its scales, as [`scale_pairs`] makes them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_grid<const N: usize, P>(
    row: &[u8],
    acts: &[Activations],
    out: &mut [f32],
    prep: impl Fn(&[u8; N]) -> P,
    run: impl Fn(&[u8; N], &P, usize) -> (__m256i, __m256i, __m256i),
) {
    let (blocks, _) = row.as_chunks::<N>();
    for (acts, out) in acts.chunks(ROWS_AT_ONCE).zip(out.chunks_mut(ROWS_AT_ONCE)) {
        let q8: [Q8k<'_>; ROWS_AT_ONCE] = std::array::from_fn(|i| Q8k::of(acts.get(i)));
        out.iter_mut().for_each(|o| *o = 0.0);
        for (j, b) in blocks.iter().enumerate() {
            // The block's runs, decoded once for every activation row.
            let shared = prep(b);
            let runs: [(__m256i, __m256i, __m256i); 8] = std::array::from_fn(|ib| run(b, &shared, ib));
            for (o, q8) in out.iter_mut().zip(&q8) {
                let Some((a, _, da)) = q8.block(j) else { continue };
                let mut acc = _mm256_setzero_si256();
                for (ib, &(grid, signs, scales)) in runs.iter().enumerate() {
                    let pairs = _mm256_maddubs_epi16(grid, _mm256_sign_epi8(a32(a, ib), signs));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, scales));
                }
                *o += half(b, 0) * da * hsum(acc) as f32;
            }
        }
    }
}

/// Activation rows a weight row's decoded blocks are used for before the next ones are
/// decoded.
const ROWS_AT_ONCE: usize = 8;

/// One activation row's Q8_K blocks (none for a missing row).
struct Q8k<'a> {
    qs: &'a [[i8; 256]],
    bsums: &'a [[i32; 16]],
    d: &'a [f32],
}

impl<'a> Q8k<'a> {
    fn of(act: Option<&'a Activations>) -> Q8k<'a> {
        match act {
            Some(act) => Q8k { qs: act.qs.as_chunks::<256>().0, bsums: act.bsums.as_chunks::<16>().0, d: &act.d },
            None => Q8k { qs: &[], bsums: &[], d: &[] },
        }
    }

    /// Block `j`: its 256 values, 16 sums and scale.
    #[inline(always)]
    fn block(&self, j: usize) -> Option<(&'a [i8; 256], &'a [i32; 16], f32)> {
        Some((self.qs.get(j)?, self.bsums.get(j)?, *self.d.get(j)?))
    }
}

/// The products of one weight row of `format` with several activation rows, into `out` (one
/// per row), each block of the row decoded once for them all: the codebook formats, whose
/// decoding (table lookups) costs more than the products. `false` for other formats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_rows(format: Format, row: &[u8], acts: &[Activations], out: &mut [f32]) -> bool {
    match format {
        // SAFETY: `vbmi` confirmed AVX-512 F, BW, VNNI and VBMI.
        Format::IQ2XXS if super::super::avx512::vbmi() => unsafe { dot_iq2xxs_avx512(row, acts, out) },
        Format::IQ2XXS => dot_iq2xxs(row, acts, out),
        // SAFETY: `vbmi` confirmed AVX-512 F, BW, VNNI and VBMI.
        Format::IQ2XS if super::super::avx512::vbmi() => unsafe { dot_iq2xs_avx512(row, acts, out) },
        Format::IQ2XS => dot_iq2xs(row, acts, out),
        // SAFETY: `vbmi` confirmed AVX-512 F, BW, VNNI and VBMI.
        Format::IQ2S if super::super::avx512::vbmi() => unsafe { dot_iq2s_avx512(row, acts, out) },
        Format::IQ2S => dot_iq2s(row, acts, out),
        // SAFETY: `vbmi` confirmed AVX-512 F, BW, VNNI and VBMI.
        Format::IQ3XXS if super::super::avx512::vbmi() => unsafe { dot_iq3xxs_avx512(row, acts, out) },
        Format::IQ3XXS => dot_iq3xxs(row, acts, out),
        // SAFETY: `vbmi` confirmed AVX-512 F, BW, VNNI and VBMI.
        Format::IQ4XS if super::super::avx512::vbmi() => unsafe { dot_iq4xs_avx512(row, acts, out) },
        // SAFETY: `vbmi` confirmed AVX-512 F, BW, VNNI and VBMI.
        Format::IQ3S if super::super::avx512::vbmi() => unsafe { dot_iq3s_avx512(row, acts, out) },
        Format::IQ3S => dot_iq3s(row, acts, out),
        // SAFETY: `available` confirmed AVX-512 F, BW and VNNI.
        Format::IQ1S if super::super::avx512::available() => unsafe { rows_iq1s_avx512(row, acts, out) },
        Format::IQ1S => dot_iq1s(row, acts, out),
        _ => return false,
    }
    true
}

/// A kernel of [`dot_rows`] for one activation row.
#[inline(always)]
fn one(row: &[u8], act: &Activations, kernel: unsafe fn(&[u8], &[Activations], &mut [f32])) -> f32 {
    let mut out = [0f32];
    // SAFETY: the caller (`dot`) has confirmed the CPU features `kernel` is compiled for.
    unsafe { kernel(row, std::slice::from_ref(act), &mut out) };
    out[0]
}

/// IQ2_XS / IQ2_S: the eight scale bytes (two 4-bit scales each, for the first and second 16
/// values of a run) as the runs' scale vectors ([`scale_pairs`]) of `2·s + 1`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibble_scales(bytes: &[u8]) -> [__m256i; 8] {
    let v = u64::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]);
    let low = _mm_and_si128(_mm_set_epi64x(0, v as i64), _mm_set1_epi8(0x0F));
    let high = _mm_and_si128(_mm_set_epi64x(0, (v >> 4) as i64), _mm_set1_epi8(0x0F));
    let s = _mm_unpacklo_epi8(low, high);
    scale_pairs(_mm_add_epi8(_mm_add_epi8(s, s), _mm_set1_epi8(1)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq2xxs(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    dot_grid::<66, ()>(
            row,
            acts,
            out,
            |_| (),
            |b, _, ib| {
                let at = 2 + 8 * ib;
                let aux = u32_at(b, at + 4);
                let g = |l: usize| &IQ2XXS_GRID[usize::from(b[at + l])];
                (grid8([g(0), g(1), g(2), g(3)], u64_of), ksigns4(aux), _mm256_set1_epi16(2 * (aux >> 28) as i16 + 1))
            },
        );
    out.iter_mut().for_each(|o| *o *= 0.125);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq2xs(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    dot_grid::<74, [__m256i; 8]>(
            row,
            acts,
            out,
            |b| nibble_scales(part::<u8, 74, 66, 8>(b)),
            |b, scales, ib| {
                let q = |l: usize| u16_at(b, 2 + 8 * ib + 2 * l);
                let g = |l: usize| &IQ2XS_GRID[usize::from(q(l) & 511)];
                (grid8([g(0), g(1), g(2), g(3)], u64_of), sign_codes([q(0) >> 9, q(1) >> 9, q(2) >> 9, q(3) >> 9]), scales[ib])
            },
        );
    out.iter_mut().for_each(|o| *o *= 0.125);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq2s(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    dot_grid::<82, [__m256i; 8]>(
            row,
            acts,
            out,
            |b| nibble_scales(part::<u8, 82, 74, 8>(b)),
            |b, scales, ib| {
                let qh = usize::from(b[66 + ib]);
                let g = |l: usize| &IQ2S_GRID[usize::from(b[2 + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)];
                (grid8([g(0), g(1), g(2), g(3)], u64_of), sign_bits(u32_at(b, 34 + 4 * ib)), scales[ib])
            },
        );
    out.iter_mut().for_each(|o| *o *= 0.125);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq3xxs(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    dot_grid::<98, ()>(
        row,
        acts,
        out,
        |_| (),
        |b, _, ib| {
            let aux = u32_at(b, 66 + 4 * ib);
            let g = |k: usize| &IQ3XXS_GRID[usize::from(b[2 + 8 * ib + k])];
            (grid4([g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7)]), ksigns4(aux), _mm256_set1_epi16(2 * (aux >> 28) as i16 + 1))
        },
    );
    out.iter_mut().for_each(|o| *o *= 0.25);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq3s(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    dot_grid::<110, ()>(
        row,
        acts,
        out,
        |_| (),
        |b, _, ib| {
            let qh = usize::from(b[66 + ib]);
            // Entry k's ninth index bit is bit k of qh.
            let g = |k: usize| &IQ3S_GRID[usize::from(b[2 + 8 * ib + k]) | ((qh << (8 - k)) & 256)];
            let ls = 2 * i16::from((b[106 + ib / 2] >> (4 * (ib % 2))) & 0x0F) + 1;
            (grid4([g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7)]), sign_bits(u32_at(b, 74 + 4 * ib)), _mm256_set1_epi16(ls))
        },
    );
}

/// Σ g·a over 32 values whose grid values `g` are -1, 0 or 1, as sixteen i16 pair sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ternary_pairs(g: __m256i, a: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_sign_epi8(a, g))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq1s(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    let (blocks, _) = row.as_chunks::<50>();
    for (acts, out) in acts.chunks(ROWS_AT_ONCE).zip(out.chunks_mut(ROWS_AT_ONCE)) {
        let q8: [Q8k<'_>; ROWS_AT_ONCE] = std::array::from_fn(|i| Q8k::of(acts.get(i)));
        out.iter_mut().for_each(|o| *o = 0.0);
        for (j, b) in blocks.iter().enumerate() {
            // The block's runs (grid values, scale, shift sign), decoded once for every row.
            let runs: [(__m256i, i32, i32); 8] = std::array::from_fn(|ib| {
                let qh = usize::from(u16_at(b, 34 + 2 * ib));
                let g = |l: usize| &IQ1S_GRID[usize::from(b[2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)];
                let delta = if qh & 0x8000 != 0 { -1 } else { 1 };
                (grid8([g(0), g(1), g(2), g(3)], u64_of_i8), 2 * ((qh >> 12) & 7) as i32 + 1, delta)
            });
            for (o, q8) in out.iter_mut().zip(&q8) {
                let Some((a, bsums, da)) = q8.block(j) else { continue };
                let mut acc = _mm256_setzero_si256();
                let mut sumi1 = 0i32;
                for (ib, &(grid, ls, delta)) in runs.iter().enumerate() {
                    let pairs = ternary_pairs(grid, a32(a, ib));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(ls as i16)));
                    sumi1 += ls * delta * (bsums[2 * ib] + bsums[2 * ib + 1]);
                }
                *o += half(b, 0) * da * (hsum(acc) as f32 + IQ1_DELTA * sumi1 as f32);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq1m(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<56>();
    let mut sum = 0f32;
    for (b, ((a, _), &da)) in blocks.iter().zip(q8k(act)) {
        let (mut acc, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        // The sixteen 3-bit scales (four per 16-bit word, at bits 0, 3, 6, 9) as bytes.
        let word = |w: usize| {
            let sc = u64::from(u16_at(b, 48 + 2 * w));
            (sc & 7) | ((sc >> 3) & 7) << 8 | ((sc >> 6) & 7) << 16 | ((sc >> 9) & 7) << 24
        };
        let s = _mm_set_epi64x((word(2) | word(3) << 32) as i64, (word(0) | word(1) << 32) as i64);
        let pairs_of = scale_pairs(_mm_add_epi8(_mm_add_epi8(s, s), _mm_set1_epi8(1)));
        for (ib, &scales) in pairs_of.iter().enumerate() {
            let qh = [u16::from(b[32 + 2 * ib]), u16::from(b[33 + 2 * ib])];
            let g = |l: usize| &IQ1S_GRID[usize::from(b[4 * ib + l]) | usize::from((qh[l / 2] << (8 - 4 * (l % 2))) & 0x700)];
            let av = a32(a, ib);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(ternary_pairs(grid8([g(0), g(1), g(2), g(3)], u64_of_i8), av), scales));
            // The shift's sign per 8 values: bit 3 of each qh nibble; all eight sign bits of
            // a group's byte set when it is negative.
            let neg = |l: usize| if qh[l / 2] & (0x08 << (4 * (l % 2))) != 0 { 0xFFu32 << (8 * l) } else { 0 };
            let shifted = _mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_sign_epi8(av, sign_bits(neg(0) | neg(1) | neg(2) | neg(3))));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(shifted, scales));
        }
        sum += iq1m_scale(b) * da * (hsum(acc) as f32 + IQ1_DELTA * hsum(acc1) as f32);
    }
    sum
}

/// A 16-entry signed byte table in both 128-bit halves, for `shuffle_epi8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn table(values: &[i8; 16]) -> __m256i {
    // SAFETY: the array is 16 readable bytes; the load has no alignment requirement.
    _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(values.as_ptr().cast()) })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq4xs(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<136>();
    let values = table(&KVALUES_IQ4NL);
    let mut sum = 0f32;
    for (b, ((a, _), &da)) in blocks.iter().zip(q8k(act)) {
        let mut acc = _mm256_setzero_si256();
        let (qs, _) = part::<u8, 136, 8, 128>(b).as_chunks::<16>();
        let h = u16_at(b, 2);
        for (ib, q) in qs.iter().enumerate() {
            let w = _mm256_shuffle_epi8(values, nibbles(load_u8x16(q)));
            let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(a32(a, ib), w));
            let ls = i32::from((b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) | (i32::from((h >> (2 * ib)) & 3) << 4);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16((ls - 32) as i16)));
        }
        sum += half(b, 0) * da * hsum(acc) as f32;
    }
    sum
}

/// MXFP4: 32-value blocks of 17 bytes (an E8M0 scale, 16 bytes of nibbles), Q8_0
/// activations; per block, as the scalar code: `sum += (d_a · d_w) · Σ w·a`. Eight blocks' integer sums
/// and scales are reduced and multiplied together.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_mxfp4(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<17>();
    let (qs, _) = act.qs.as_chunks::<32>();
    let values = table(&KVALUES_MXFP4);
    let block = |b: &[u8; 17], a: &[i8; 32]| {
        let w = _mm256_shuffle_epi8(values, nibbles(load_u8x16(part::<u8, 17, 1, 16>(b))));
        mul_i8(w, load_i8(a))
    };
    let mut sum = 0f32;
    let (b8, b_rest) = blocks.as_chunks::<8>();
    let (q8, q_rest) = qs.as_chunks::<8>();
    let (d8, d_rest) = act.d.as_chunks::<8>();
    let mut pending: Option<[f32; 8]> = None;
    for ((b, a), d) in b8.iter().zip(q8).zip(d8) {
        let sums = hsum_each(std::array::from_fn(|k| block(&b[k], &a[k])));
        // The eight E8M0 scales halved, 2^(e − 128), built in lanes (eight scalar results
        // stored and reloaded as a vector would stall the load): (e − 1) << 23, or for e < 2
        // the subnormal 2^21 << e.
        // Gathered in a general-purpose register, then widened in one go.
        let bytes = b.iter().enumerate().fold(0u64, |e, (k, b)| e | u64::from(b[0]) << (8 * k));
        let e = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes as i64));
        let normal = _mm256_slli_epi32::<23>(_mm256_sub_epi32(e, _mm256_set1_epi32(1)));
        let subnormal = _mm256_sllv_epi32(_mm256_set1_epi32(0x0020_0000), e);
        let scales = _mm256_castsi256_ps(_mm256_blendv_epi8(subnormal, normal, _mm256_cmpgt_epi32(e, _mm256_set1_epi32(1))));
        // (d_a · d_w) · Σ, lane by lane, then added in block order.
        let terms = _mm256_mul_ps(_mm256_mul_ps(load_f32(d), scales), _mm256_cvtepi32_ps(sums));
        // SAFETY: eight f32 lanes are eight f32s; every bit pattern is a valid f32.
        let terms: [f32; 8] = unsafe { std::mem::transmute::<__m256, [f32; 8]>(terms) };
        // Added one group late, so the serial additions overlap the next group's integer work.
        if let Some(p) = pending.replace(terms) {
            for t in p {
                sum += t;
            }
        }
    }
    for t in pending.into_iter().flatten() {
        sum += t;
    }
    for ((b, a), &d) in b_rest.iter().zip(q_rest).zip(d_rest) {
        sum += d * e8m0_half(b[0]) * hsum(block(b, a)) as f32;
    }
    sum
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q2k(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<84>();
    let three = _mm256_set1_epi8(3);
    let mut sum = 0f32;
    for (b, ((a, bsums), &da)) in blocks.iter().zip(q8k(act)) {
        let scale_bytes = load_u8x16(part::<u8, 84, 0, 16>(b));
        let pairs_of = scale_pairs(_mm_and_si128(scale_bytes, _mm_set1_epi8(0x0F)));
        let mut acc = _mm256_setzero_si256();
        for half_block in 0..2 {
            let q = load_u8(if half_block == 0 { part::<u8, 84, 16, 32>(b) } else { part::<u8, 84, 48, 32>(b) });
            let shifted = [q, _mm256_srli_epi16::<2>(q), _mm256_srli_epi16::<4>(q), _mm256_srli_epi16::<6>(q)];
            for (s, q) in shifted.into_iter().enumerate() {
                let ib = 4 * half_block + s;
                let pairs = _mm256_maddubs_epi16(_mm256_and_si256(q, three), a32(a, ib));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, pairs_of[ib]));
            }
        }
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(scale_bytes), _mm_set1_epi8(0x0F)));
        let summs = hsum(_mm256_madd_epi16(mins, bsums_i16(bsums)));
        let dall = da * half(b, 80);
        let dmin = da * half(b, 82);
        sum += dall * hsum(acc) as f32 - dmin * summs as f32;
    }
    sum
}

/// Q3_K's sixteen 6-bit scales less 32 ([`q3k_scales`]) as the bytes of a vector: low
/// nibbles from bytes 0..8 (scales 0..8) and their high nibbles (8..16), the top two bits
/// from bytes 8..12, two bits per scale, shifted by 0, 2, 4, 6 for each run of four scales.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q3k_scales_x(s: &[u8; 12]) -> __m128i {
    let low = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
    let h = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let nibbles = _mm_and_si128(_mm_set_epi64x((low >> 4) as i64, low as i64), _mm_set1_epi8(0x0F));
    let tops = _mm_and_si128(_mm_set_epi32((h >> 6) as i32, (h >> 4) as i32, (h >> 2) as i32, h as i32), _mm_set1_epi8(3));
    _mm_sub_epi8(_mm_or_si128(nibbles, _mm_slli_epi16::<4>(tops)), _mm_set1_epi8(32))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q3k(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<110>();
    let three = _mm256_set1_epi8(3);
    let four = _mm256_set1_epi8(4);
    let mut sum = 0f32;
    for (b, ((a, bsums), &da)) in blocks.iter().zip(q8k(act)) {
        let scales = q3k_scales_x(part::<u8, 110, 96, 12>(b));
        let pairs_of = scale_pairs(scales);
        let hm = load_u8(part::<u8, 110, 0, 32>(b));
        let mut acc = _mm256_setzero_si256();
        for half_block in 0..2 {
            let q = load_u8(if half_block == 0 { part::<u8, 110, 32, 32>(b) } else { part::<u8, 110, 64, 32>(b) });
            let shifted = [q, _mm256_srli_epi16::<2>(q), _mm256_srli_epi16::<4>(q), _mm256_srli_epi16::<6>(q)];
            for (s, q) in shifted.into_iter().enumerate() {
                let ib = 4 * half_block + s;
                let bit = _mm256_set1_epi8((1u8 << ib) as i8);
                // The value plus 4: the two low bits, and 4 where the high bit is set.
                let high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), four);
                let w = _mm256_or_si256(_mm256_and_si256(q, three), high);
                let pairs = _mm256_maddubs_epi16(w, a32(a, ib));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, pairs_of[ib]));
            }
        }
        // Σ sc·((w + 4)·a) − 4 · Σ sc·(Σa over each 16) = Σ sc·(w·a), exactly.
        let s16 = _mm256_cvtepi8_epi16(scales);
        let offset = _mm256_madd_epi16(s16, bsums_i16(bsums));
        sum += half(b, 108) * da * hsum(_mm256_sub_epi32(acc, _mm256_slli_epi32::<2>(offset))) as f32;
    }
    sum
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_tq2(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<66>();
    let three = _mm256_set1_epi8(3);
    let mut sum = 0f32;
    for (b, ((a, bsums), &da)) in blocks.iter().zip(q8k(act)) {
        let mut acc = _mm256_setzero_si256();
        for half_block in 0..2 {
            let q = load_u8(if half_block == 0 { part::<u8, 66, 0, 32>(b) } else { part::<u8, 66, 32, 32>(b) });
            let shifted = [q, _mm256_srli_epi16::<2>(q), _mm256_srli_epi16::<4>(q), _mm256_srli_epi16::<6>(q)];
            for (s, q) in shifted.into_iter().enumerate() {
                acc = _mm256_add_epi32(acc, mul_u8(_mm256_and_si256(q, three), a32(a, 4 * half_block + s)));
            }
        }
        // The values are stored plus one: Σ (v − 1)·a = Σ v·a − Σ a.
        let sumi = hsum(acc) - bsums.iter().sum::<i32>();
        sum += sumi as f32 * (half(b, 64) * da);
    }
    sum
}

/// The base-3 digits (0..2) of bytes `x` selected by the multipliers `m` (3^n per byte):
/// ⌊3 · (x·m mod 256) / 256⌋, as llama.cpp reads TQ1_0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn trits(x: __m256i, m: __m256i) -> __m256i {
    let low = _mm256_set1_epi16(0x00FF);
    // x·m mod 256 per byte: even bytes in the low half of each 16-bit word, odd bytes in the
    // high half (whose product's low 16 bits keep exactly (x·m mod 256) · 256).
    let even = _mm256_and_si256(_mm256_mullo_epi16(_mm256_and_si256(x, low), _mm256_and_si256(m, low)), low);
    let odd = _mm256_mullo_epi16(_mm256_andnot_si256(low, x), _mm256_srli_epi16::<8>(m));
    // (q · 3) >> 8: for even bytes from the 16-bit product; for odd ones, q · 256 · 3 >> 16.
    let three = _mm256_set1_epi16(3);
    let d_even = _mm256_srli_epi16::<8>(_mm256_mullo_epi16(even, three));
    let d_odd = _mm256_slli_epi16::<8>(_mm256_mulhi_epu16(odd, three));
    _mm256_or_si256(d_even, d_odd)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_tq1(row: &[u8], act: &Activations) -> f32 {
    let (blocks, _) = row.as_chunks::<54>();
    let pow = |lo: i8, hi: i8| _mm256_set_m128i(_mm_set1_epi8(hi), _mm_set1_epi8(lo));
    let mut sum = 0f32;
    for (b, ((a, bsums), &da)) in blocks.iter().zip(q8k(act)) {
        let head = load_u8(part::<u8, 54, 0, 32>(b));
        let tail = load_u8x16(part::<u8, 54, 32, 16>(b));
        let tail2 = _mm256_set_m128i(tail, tail);
        let qh = _mm256_set1_epi32(u32_at(b, 48) as i32);
        // Values 0..160: digit n of the first 32 bytes; 160..240: digit n of the next 16;
        // 240..256: digit n of the four qh bytes, n = 0..4.
        let runs = [
            trits(head, _mm256_set1_epi8(1)),
            trits(head, _mm256_set1_epi8(3)),
            trits(head, _mm256_set1_epi8(9)),
            trits(head, _mm256_set1_epi8(27)),
            trits(head, _mm256_set1_epi8(81)),
            trits(tail2, pow(1, 3)),
            trits(tail2, pow(9, 27)),
            trits(_mm256_set_m128i(_mm256_castsi256_si128(qh), tail), _mm256_set_epi32(0x1B1B_1B1B, 0x0909_0909, 0x0303_0303, 0x0101_0101, 0x5151_5151, 0x5151_5151, 0x5151_5151, 0x5151_5151)),
        ];
        let mut acc = _mm256_setzero_si256();
        for (ib, w) in runs.into_iter().enumerate() {
            acc = _mm256_add_epi32(acc, mul_u8(w, a32(a, ib)));
        }
        // The digits are the values plus one: Σ (v − 1)·a = Σ v·a − Σ a.
        let sumi = hsum(acc) - bsums.iter().sum::<i32>();
        sum += sumi as f32 * (half(b, 52) * da);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::grids::KSIGNS_IQ2XS;

    /// The derived ±1 sign bytes are the sign table's bits.
    #[test]
    fn signs_follow_ksigns() {
        for (code, &signs) in KSIGNS_IQ2XS.iter().enumerate() {
            for j in 0..8 {
                let byte = (SIGN_BYTES[code] >> (8 * j)) as u8;
                assert_eq!(byte, if signs >> j & 1 != 0 { 0xFF } else { 0x01 }, "code {code} sign {j}");
            }
        }
    }
}

/// The 11-bit grid indices of an IQ1_S block's 32 entries (eight bits from `qs`, three from
/// the run's `qh` word) in 16-bit lanes, entry `4·run + l` in lane `4·run + l`; and the eight
/// `qh` words.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn iq1s_indices(b: &[u8; 50]) -> (__m512i, __m128i) {
    // Lane k (of 32 u16 lanes) belongs to run k / 4, grid entry k % 4.
    let run_of_lane = _mm512_set_epi16(
        7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0,
    );
    let shift_of_lane = _mm512_set_epi16(
        9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0,
    );
    // SAFETY: bytes 2..34 and 34..50 lie inside the 50-byte block.
    let (qs, qh) = unsafe { (_mm256_loadu_si256(b.as_ptr().add(2).cast()), _mm_loadu_si128(b.as_ptr().add(34).cast())) };
    let high = _mm512_srlv_epi16(_mm512_permutexvar_epi16(run_of_lane, _mm512_castsi128_si512(qh)), shift_of_lane);
    (_mm512_or_si512(_mm512_cvtepu8_epi16(qs), _mm512_slli_epi16::<8>(_mm512_and_si512(high, _mm512_set1_epi16(7)))), qh)
}

/// Entries `8p..8p + 8` of an IQ1_S block (their indices in [`iq1s_indices`]' 16-bit lanes
/// `8p..8p + 8`), gathered from `grid`, one 8-byte entry per 64-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn iq1s_entries<T: Copy>(grid: &[[T; 8]; 2048], index: __m512i, p: usize) -> __m512i {
    const { assert!(std::mem::size_of::<T>() == 1) };
    let eight = match p {
        0 => _mm512_extracti32x4_epi32::<0>(index),
        1 => _mm512_extracti32x4_epi32::<1>(index),
        2 => _mm512_extracti32x4_epi32::<2>(index),
        _ => _mm512_extracti32x4_epi32::<3>(index),
    };
    // SAFETY: every index is below 2048 (8 + 3 bits), the grid's length, and each entry is 8
    // bytes.
    unsafe { _mm512_i32gather_epi64::<8>(_mm256_cvtepu16_epi32(eight), grid.as_ptr().cast()) }
}

/// IQ1_S's grid with each value `v` (-1, 0 or 1) stored as the digit `v + 1`: the byte
/// shuffles of [`rows_iq1s_avx512`] look values up by it.
static IQ1S_DIGITS: [[u8; 8]; 2048] = {
    let mut digits = [[0u8; 8]; 2048];
    let mut i = 0;
    while i < 2048 {
        let mut j = 0;
        while j < 8 {
            digits[i][j] = (IQ1S_GRID[i][j] + 1) as u8;
            j += 1;
        }
        i += 1;
    }
    digits
};

/// IQ1_S's grid as 16-bit codes of its digits `v + 1` (0, 1, 2; [`IQ1S_DIGITS`]), value `j`
/// in bits `2j..2j + 2`, and one code more (zero) so that a 4-byte read at any entry stays
/// inside: [`tiles_iq1s`] gathers them.
static IQ1S_CODES: [u16; 2049] = {
    let mut codes = [0u16; 2049];
    let mut i = 0;
    while i < 2048 {
        let mut j = 0;
        while j < 8 {
            codes[i] |= ((IQ1S_GRID[i][j] + 1) as u16) << (2 * j);
            j += 1;
        }
        i += 1;
    }
    codes
};

/// A decoded IQ1_S block: each value's weight `ls·(8·g + delta)` (`g` its grid value, `ls` and
/// `delta` its run's scale and shift sign) as a magnitude in unsigned bytes (values
/// `64p..64p + 64` in vector `p`, at most 15 · 9) and the mask of the negative ones.
struct Iq1s {
    magnitudes: [__m512i; 4],
    negative: [u64; 4],
}

/// Decodes an IQ1_S block for [`rows_iq1s_avx512`]. The 32 grid entries (11-bit indices
/// computed in vector lanes) are gathered as digits ([`IQ1S_DIGITS`]); each 128-bit lane of
/// 16 values lies in one run, so a byte shuffle of a 4-byte table per run maps the digits to
/// the weights' magnitudes (`9·ls` where `g` has `delta`'s sign, `7·ls` where it has the
/// other, `ls` where `g` is 0), and a compare with the run's threshold (`1`, or `2` where
/// `delta` is -1) marks the negative ones.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn iq1s_block(b: &[u8; 50]) -> Iq1s {
    let (index, qh) = iq1s_indices(b);
    // Each run's table in a 32-bit lane: the magnitudes of digits 0, 1, 2 (g = -1, 0, 1) in
    // bytes 0..3, and in byte 3 the digit below which a value is negative.
    let ls = _mm_add_epi16(_mm_slli_epi16::<1>(_mm_and_si128(_mm_srli_epi16::<12>(qh), _mm_set1_epi16(7))), _mm_set1_epi16(1));
    let (nine, seven) = (_mm_add_epi16(_mm_slli_epi16::<3>(ls), ls), _mm_sub_epi16(_mm_slli_epi16::<3>(ls), ls));
    // All ones in the runs whose delta is -1.
    let minus = _mm_srai_epi16::<15>(qh);
    let (below, above) = (_mm_blendv_epi8(seven, nine, minus), _mm_blendv_epi8(nine, seven, minus));
    let threshold = _mm_sub_epi16(_mm_set1_epi16(1), minus);
    let low = _mm_or_si128(below, _mm_slli_epi16::<8>(ls));
    let high = _mm_or_si128(above, _mm_slli_epi16::<8>(threshold));
    let tables = _mm512_castsi256_si512(_mm256_or_si256(_mm256_cvtepu16_epi32(low), _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(high))));
    let mut block = Iq1s { magnitudes: [_mm512_setzero_si512(); 4], negative: [0; 4] };
    for p in 0..4 {
        let digits = iq1s_entries(&IQ1S_DIGITS, index, p);
        // Runs 2p and 2p + 1, each over two 128-bit lanes.
        let table = _mm512_permutexvar_epi32(_mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(2 * p as i32), _mm512_set1_epi32(2 * p as i32 + 1)), tables);
        block.magnitudes[p] = _mm512_shuffle_epi8(table, digits);
        block.negative[p] = _mm512_cmplt_epu8_mask(digits, _mm512_shuffle_epi8(table, _mm512_set1_epi8(3)));
    }
    block
}

/// Σ w·a over a decoded IQ1_S block ([`iq1s_block`]) and 256 Q8_K activations, in 16 i32
/// lanes: one `vpdpbusd` for 64 products (the activations negated where the weights are).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn iq1s_products(block: &Iq1s, a: &[i8; 256]) -> __m512i {
    let mut acc = _mm512_setzero_si512();
    for p in 0..4 {
        // SAFETY: values 64p..64p + 64 lie inside the 256-value block.
        let av = unsafe { _mm512_loadu_si512(a.as_ptr().add(64 * p).cast()) };
        acc = _mm512_dpbusd_epi32(acc, block.magnitudes[p], _mm512_mask_sub_epi8(av, block.negative[p], _mm512_setzero_si512(), av));
    }
    acc
}

/// IQ1_S with AVX-512 VNNI for several activation rows ([`pairs_avx512`]): each block
/// decoded once ([`iq1s_block`]) into the weights `ls·(8·g + delta)`, so that one `vpdpbusd`
/// chain per activation row gives `8·sumi + sumi1`, the scalar code's two sums in one. Every
/// integer is below 2^24, so `(8·sumi + sumi1) · IQ1_DELTA` in f32 is exactly the scalar
/// code's `sumi + IQ1_DELTA·sumi1` (both are that rational number, which f32 holds: at most 20
/// integer bits and 3 fractional), and the rest of the f32 arithmetic per block is the scalar
/// code's: bit-identical to [`dot_iq1s`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn rows_iq1s_avx512(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    pairs_avx512::<50, Iq1s>(row, acts, out, IQ1_DELTA, |b| iq1s_block(b), |block, a, _| iq1s_products(block, a));
}

/// IQ1_S with AVX-512 VNNI for one activation row (decoding; [`rows_iq1s_avx512`] for
/// several): a block's 32 grid entries are gathered (their 11-bit indices computed in vector
/// lanes); each value's magnitude (0 or 1) becomes its run's scale or zero, an unsigned byte,
/// and its sign moves onto the activation, so that `vpdpbusd` sums 64 scaled products in one
/// instruction. The runs' `delta` terms come from the activations' 16-value sums times each
/// run's `ls·delta` (computed in vector lanes, as are the scales), and join the products as
/// `8·sumi + sumi1` in one reduction: every integer is below 2^24, so `(8·sumi + sumi1) ·
/// IQ1_DELTA` in f32 is exactly the scalar code's `sumi + IQ1_DELTA·sumi1` (see
/// [`rows_iq1s_avx512`]), and the rest of the f32 arithmetic per block is the scalar code's:
/// bit-identical to [`dot_iq1s`]. Its decoding is cheaper than [`iq1s_block`]'s and its
/// products per row dearer: for one row it is the faster, for two and more the slower.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_iq1s_avx512(row: &[u8], act: &Activations) -> f32 {
    // 16-bit lane k of the scales' permutation: run 2p's scale for lanes 0..16 (bytes 0..32),
    // run 2p + 1's for lanes 16..32.
    let runs_of = |p: i16| _mm512_mask_blend_epi16(0xFFFF_0000, _mm512_set1_epi16(2 * p), _mm512_set1_epi16(2 * p + 1));
    let run_pairs = [runs_of(0), runs_of(1), runs_of(2), runs_of(3)];
    // 32-bit lane k of the deltas: run k / 2 (its pair of 16-value sums).
    let run_of_sum = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    // 8·sumi + sumi1 of a block in 16 i32 lanes.
    let total = |b: &[u8; 50], a: &[i8; 256], bsums: &[i32; 16]| {
        let (index, qh) = iq1s_indices(b);
        // Each run's scale 2·((qh >> 12) & 7) + 1, and ls·delta (delta = -1 where qh's top bit is set).
        let ls = _mm_or_si128(_mm_slli_epi16::<1>(_mm_and_si128(_mm_srli_epi16::<12>(qh), _mm_set1_epi16(7))), _mm_set1_epi16(1));
        let minus = _mm_srai_epi16::<15>(qh);
        let ls_delta = _mm_sub_epi16(_mm_xor_si128(ls, minus), minus);
        let deltas = _mm512_permutexvar_epi32(run_of_sum, _mm512_castsi256_si512(_mm256_cvtepi16_epi32(ls_delta)));
        // The scale in both bytes of each 16-bit lane.
        let ls_bytes = _mm512_castsi128_si512(_mm_or_si128(ls, _mm_slli_epi16::<8>(ls)));
        let mut acc = _mm512_setzero_si512();
        for (p, runs) in run_pairs.iter().enumerate() {
            // Values 64p..64p + 64 (runs 2p and 2p + 1): the run's scale where the grid says ±1,
            // else 0; the activations negated where it says -1.
            let g = iq1s_entries(&IQ1S_GRID, index, p);
            let scaled = _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(g, g), _mm512_permutexvar_epi16(*runs, ls_bytes));
            // SAFETY: values 64p..64p + 64 lie inside the 256-value block.
            let av = unsafe { _mm512_loadu_si512(a.as_ptr().add(64 * p).cast()) };
            acc = _mm512_dpbusd_epi32(acc, scaled, _mm512_mask_sub_epi8(av, _mm512_movepi8_mask(g), _mm512_setzero_si512(), av));
        }
        // SAFETY: the block's 16 sums, 64 bytes.
        let sums = unsafe { _mm512_loadu_si512(bsums.as_ptr().cast()) };
        _mm512_add_epi32(_mm512_slli_epi32::<3>(acc), _mm512_mullo_epi32(sums, deltas))
    };
    let (blocks, _) = row.as_chunks::<50>();
    let mut out = 0f32;
    for (b, ((a, bsums), &da)) in blocks.iter().zip(q8k(act)) {
        out += half(b, 0) * da * (_mm512_reduce_add_epi32(total(b, a, bsums)) as f32 * IQ1_DELTA);
    }
    out
}

// ----------------------------------------------------------------------------------------
// Tiles: sixteen weight rows at a time, for several activation rows.

/// Transposes sixteen vectors of sixteen 32-bit lanes: lane `k` of vector `i` of the result
/// is lane `i` of vector `k`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(v: &[__m512i; 16]) -> [__m512i; 16] {
    // Rows 2t and 2t + 1 interleaved by 32 bits, then rows 4u..4u + 4 by 64 bits: q[4u + e]
    // holds, in its 128-bit lane L, lane 4L + e of rows 4u..4u + 4.
    let s1: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (v[i & !1], v[i | 1]);
        if i % 2 == 0 { _mm512_unpacklo_epi32(a, b) } else { _mm512_unpackhi_epi32(a, b) }
    });
    let q: [__m512i; 16] = std::array::from_fn(|i| {
        let (u, e) = (i / 4, i % 4);
        let (a, b) = (s1[4 * u + e / 2], s1[4 * u + 2 + e / 2]);
        if e % 2 == 0 { _mm512_unpacklo_epi64(a, b) } else { _mm512_unpackhi_epi64(a, b) }
    });
    // Then the 128-bit lanes: result 4L + e takes lane L of q[e], q[4 + e], q[8 + e], q[12 + e].
    let mut out = [_mm512_setzero_si512(); 16];
    for e in 0..4 {
        let (a, b, c, d) = (q[e], q[4 + e], q[8 + e], q[12 + e]);
        let (t0, t1) = (_mm512_shuffle_i32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_i32x4::<0b11_10_11_10>(a, b));
        let (t2, t3) = (_mm512_shuffle_i32x4::<0b01_00_01_00>(c, d), _mm512_shuffle_i32x4::<0b11_10_11_10>(c, d));
        out[e] = _mm512_shuffle_i32x4::<0b10_00_10_00>(t0, t2);
        out[4 + e] = _mm512_shuffle_i32x4::<0b11_01_11_01>(t0, t2);
        out[8 + e] = _mm512_shuffle_i32x4::<0b10_00_10_00>(t1, t3);
        out[12 + e] = _mm512_shuffle_i32x4::<0b11_01_11_01>(t1, t3);
    }
    out
}

/// Blocks ahead of the one decoded that [`tiles`] asks for in each row.
const PREFETCH_BLOCKS: usize = 4;

/// What a tile needs of its rows' block besides the values, each vector one row per lane:
/// each run's multiplier, each pair of runs' corrections (two i16s in a lane, met by the
/// activations' pairs of 32-value sums) and the block's scale `d`.
struct TileScales {
    multipliers: [__m512i; 8],
    corrections: [__m512i; 4],
    d: __m512,
}

/// The dword at byte `at` of block `j` of each of the tile's sixteen rows (`offsets`: each
/// row's start, in bytes from `base`).
///
/// # Safety
/// Every dword read must lie inside the rows.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn gather_rows(base: *const u8, offsets: __m512i, at: usize) -> __m512i {
    // SAFETY: the caller vouches for the reads.
    unsafe { _mm512_i32gather_epi32::<1>(_mm512_add_epi32(offsets, _mm512_set1_epi32(at as i32)), base.cast()) }
}

/// The products of sixteen weight rows (`rows`: `TILE_ROWS · row_bytes` bytes) in a codebook
/// format with each activation row, into `out` (`out[r·m + i]`, row `r`, activation row `i`,
/// as [`dot_rows`] leaves them), rows on 32-bit lanes as the strips' kernels
/// ([`super::super::avx512`]) have them, so that no horizontal sum is needed: each block
/// position of the sixteen rows is decoded once into unsigned bytes (`values`: values
/// `64p..64p + 64` of a row in vector `p`) and transposed into 64 vectors of four values of
/// every row; then, for each activation row, one `vpdpbusd` against four broadcast activation
/// bytes adds four products to every row's lane. Per run of 32 values, the lanes are scaled by
/// the run's multiplier, and the activations' run sums, times each row's correction, take off
/// what the unsigned values add (`scales`). Each block's integer sum is exact, and the f32
/// arithmetic is the scalar code's: `(d · d_a) · (sum · inner)` added block by block, times
/// `multiplier` at the end: bit-identical to [`dot_rows`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn tiles<const N: usize>(
    rows: &[u8],
    acts: &[Activations],
    out: &mut [f32],
    multiplier: f32,
    inner: f32,
    decode: impl Fn(&[&[u8; N]; TILE_ROWS], &mut [[__m512i; 16]; 4], &mut [[__m512i; 16]; 4]),
    scales: impl Fn(*const u8, __m512i) -> TileScales,
) -> bool {
    let m = acts.len();
    let row_bytes = rows.len() / TILE_ROWS;
    let blocks = row_bytes / N;
    let offsets = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(row_bytes as i32));
    let q8: Vec<Q8k<'_>> = acts.iter().map(|a| Q8k::of(Some(a))).collect();
    let mut acc = vec![_mm512_setzero_ps(); m];
    let (all, _) = rows.as_chunks::<N>();
    if all.len() != TILE_ROWS * blocks || out.len() < TILE_ROWS * m || q8.iter().any(|q| q.qs.len() < blocks || q.bsums.len() < blocks || q.d.len() < blocks) {
        return false;
    }
    // tile[p][i]: lane k = row k's dword i of vector p (values 64p + 4i..64p + 4i + 4), and
    // the decoders' scratch; both kept across positions (not cleared).
    let mut scratch = [[_mm512_setzero_si512(); 16]; 4];
    let mut tile = [[_mm512_setzero_si512(); 16]; 4];
    // The next sixteen rows (they follow these in the matrix; a prefetch past its end is a
    // hint the CPU drops), asked for a share at each block position, lines of 64 bytes.
    let (next, lines) = (rows.as_ptr().wrapping_add(rows.len()), rows.len().div_ceil(64));
    for j in 0..blocks {
        // The sixteen rows are sixteen streams: ask for each one's next blocks ahead.
        for k in 0..TILE_ROWS {
            if let Some(ahead) = all.get(k * blocks + j + PREFETCH_BLOCKS) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.as_ptr().cast());
            }
        }
        for line in j * lines / blocks..(j + 1) * lines / blocks {
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(64 * line).cast());
        }
        decode(&std::array::from_fn(|k| &all[k * blocks + j]), &mut scratch, &mut tile);
        // Each row's block j: the scales' gathers read inside it (checked where they are made).
        let sc = scales(rows.as_ptr(), _mm512_add_epi32(offsets, _mm512_set1_epi32((j * N) as i32)));
        // Activation rows four at a time, each tile vector loaded once for them.
        let (fours, rest) = q8.as_chunks::<4>();
        for (c, four) in fours.iter().enumerate() {
            tile_rows(&tile, &sc, four.each_ref(), j, inner, &mut acc[4 * c..4 * c + 4]);
        }
        // The rest in one group of their number.
        let acc = &mut acc[4 * fours.len()..];
        match rest {
            [a] => tile_rows(&tile, &sc, [a], j, inner, acc),
            [a, b] => tile_rows(&tile, &sc, [a, b], j, inner, acc),
            [a, b, c] => tile_rows(&tile, &sc, [a, b, c], j, inner, acc),
            _ => {}
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: sixteen f32 lanes are sixteen f32s.
        let lanes = unsafe { std::mem::transmute::<__m512, [f32; 16]>(*acc) };
        for (k, v) in lanes.iter().enumerate() {
            if let Some(o) = out.get_mut(k * m + i) {
                *o = v * multiplier;
            }
        }
    }
    true
}

/// [`tiles`]' products of one block position of its sixteen rows (`tile`, `sc`) with `C`
/// activation rows, added to their accumulators `acc`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_rows<const C: usize>(tile: &[[__m512i; 16]; 4], sc: &TileScales, q8: [&Q8k<'_>; C], j: usize, inner: f32, acc: &mut [__m512]) {
    // Every activation row has block j ([`tiles`] checked).
    let blocks = q8.map(|q| (&q.qs[j], &q.bsums[j], q.d[j]));
    let words: [&[[i8; 4]]; C] = blocks.map(|(a, _, _)| a.as_chunks::<4>().0);
    let mut sumi = [_mm512_setzero_si512(); C];
    for r in 0..8 {
        let mut dot = [_mm512_setzero_si512(); C];
        for g in 0..8 {
            let v = tile[r / 2][8 * (r % 2) + g];
            for (dot, words) in dot.iter_mut().zip(&words) {
                *dot = _mm512_dpbusd_epi32(*dot, v, _mm512_set1_epi32(i32::from_ne_bytes(words[8 * r + g].map(|x| x as u8))));
            }
        }
        for (sumi, dot) in sumi.iter_mut().zip(dot) {
            *sumi = _mm512_add_epi32(*sumi, _mm512_mullo_epi32(dot, sc.multipliers[r]));
        }
    }
    for ((sumi, (_, bsums, da)), acc) in sumi.iter_mut().zip(blocks).zip(acc) {
        for (q, correction) in sc.corrections.iter().enumerate() {
            let run = |r: usize| bsums[2 * r] + bsums[2 * r + 1];
            let pair = (run(2 * q) & 0xFFFF) | (run(2 * q + 1) << 16);
            *sumi = _mm512_dpwssd_epi32(*sumi, *correction, _mm512_set1_epi32(pair));
        }
        let term = _mm512_mul_ps(_mm512_mul_ps(sc.d, _mm512_set1_ps(da)), _mm512_mul_ps(_mm512_cvtepi32_ps(*sumi), _mm512_set1_ps(inner)));
        *acc = _mm512_add_ps(*acc, term);
    }
}

/// A [`tiles`] decoder from one that decodes a row's block into its four vectors of values:
/// the sixteen rows' vectors (in `scratch`, `scratch[p][k]` vector `p` of row `k`) transposed.
#[inline]
#[target_feature(enable = "avx512f")]
fn rows_transposed<const N: usize>(blocks: &[&[u8; N]; TILE_ROWS], scratch: &mut [[__m512i; 16]; 4], tile: &mut [[__m512i; 16]; 4], values: impl Fn(&[u8; N]) -> [__m512i; 4]) {
    for (k, b) in blocks.iter().enumerate() {
        for (p, v) in values(b).into_iter().enumerate() {
            scratch[p][k] = v;
        }
    }
    for (t, v) in tile.iter_mut().zip(scratch.iter()) {
        *t = transpose16(v);
    }
}

impl TileScales {
    /// Each run's multiplier and correction (one row per lane), the corrections paired for
    /// `vpdpwssd`, and the rows' `d` (at byte 0 of each block).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn of(runs: [(__m512i, __m512i); 8], base: *const u8, offsets: __m512i) -> TileScales {
        TileScales {
            multipliers: runs.map(|(m, _)| m),
            corrections: std::array::from_fn(|q| pack_pairs(runs[2 * q].1, runs[2 * q + 1].1)),
            d: tile_d(base, offsets),
        }
    }
}

/// Sixteen rows' blocks' f16 scales (at byte 0), widened to f32 exactly.
#[inline]
#[target_feature(enable = "avx512f")]
fn tile_d(base: *const u8, offsets: __m512i) -> __m512 {
    // SAFETY: bytes 0..4 of every block lie inside it (its blocks are at least 50 bytes).
    let words = unsafe { gather_rows(base, offsets, 0) };
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words))
}

/// Two i16 lanes per i32: `lo` in the low half.
#[inline]
#[target_feature(enable = "avx512f")]
fn pack_pairs(lo: __m512i, hi: __m512i) -> __m512i {
    _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32::<16>(hi))
}

/// IQ1_S [`tiles`]: values `g + 1` (0, 1, 2) as gathered digits; each run's multiplier
/// `8·ls` and correction `ls·(delta − 8)`, so that a block's sum is
/// `Σ 8·ls·Σ(g + 1)·a + ls·(delta − 8)·Σa = 8·sumi + sumi1`, and `inner` 1/8 as in
/// [`rows_iq1s_avx512`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn tiles_iq1s(rows: &[u8], acts: &[Activations], out: &mut [f32]) -> bool {
    // The rows' grid indices transposed (two entries per 32-bit lane, row k in lane k), then
    // each entry's code gathered for the sixteen rows at once (one dword per row, the code in
    // its low 16 bits) and its 2-bit digits spread into the tile's two dwords of the entry,
    // one byte each: a byte of `vpmultishiftqb` reads a digit from its qword's two rows' codes.
    let first = _mm512_set1_epi64(0x2624_2220_0604_0200);
    let second = _mm512_set1_epi64(0x2E2C_2A28_0E0C_0A08);
    let three = _mm512_set1_epi8(3);
    let decode = |blocks: &[&[u8; 50]; TILE_ROWS], scratch: &mut [[__m512i; 16]; 4], tile: &mut [[__m512i; 16]; 4]| {
        for (k, b) in blocks.iter().enumerate() {
            scratch[0][k] = iq1s_indices(b).0;
        }
        let pairs = transpose16(&scratch[0]);
        for (i, pair) in pairs.iter().enumerate() {
            for half in 0..2 {
                let index = if half == 0 { _mm512_and_si512(*pair, _mm512_set1_epi32(0xFFFF)) } else { _mm512_srli_epi32::<16>(*pair) };
                // SAFETY: every index is below 2048 (8 + 3 bits) and the table has a code past
                // the last, so each 4-byte read at 2·index lies inside it.
                let codes = unsafe { _mm512_i32gather_epi32::<2>(index, IQ1S_CODES.as_ptr().cast()) };
                // Entry e = 2i + half: values 8e..8e + 8, dwords 2(e % 8) and 2(e % 8) + 1 of vector e / 8.
                let e = 2 * i + half;
                tile[e / 8][2 * (e % 8)] = _mm512_and_si512(_mm512_multishift_epi64_epi8(first, codes), three);
                tile[e / 8][2 * (e % 8) + 1] = _mm512_and_si512(_mm512_multishift_epi64_epi8(second, codes), three);
            }
        }
    };
    let scales = |base: *const u8, offsets: __m512i| {
        // Runs 2q and 2q + 1's qh words in the dword at 34 + 4q.
        // SAFETY: bytes 34 + 4q..38 + 4q ≤ 50 lie inside each row's block.
        let words: [__m512i; 4] = std::array::from_fn(|q| unsafe { gather_rows(base, offsets, 34 + 4 * q) });
        let runs: [(__m512i, __m512i); 8] = std::array::from_fn(|r| {
            let qh = if r % 2 == 0 { _mm512_and_si512(words[r / 2], _mm512_set1_epi32(0xFFFF)) } else { _mm512_srli_epi32::<16>(words[r / 2]) };
            let ls = _mm512_add_epi32(_mm512_slli_epi32::<1>(_mm512_and_si512(_mm512_srli_epi32::<12>(qh), _mm512_set1_epi32(7))), _mm512_set1_epi32(1));
            let minus = _mm512_test_epi32_mask(qh, _mm512_set1_epi32(0x8000));
            // ls·(delta − 8): -7·ls, or -9·ls where delta is -1.
            let correction = _mm512_mullo_epi32(ls, _mm512_mask_blend_epi32(minus, _mm512_set1_epi32(-7), _mm512_set1_epi32(-9)));
            (_mm512_slli_epi32::<3>(ls), correction)
        });
        TileScales::of(runs, base, offsets)
    };
    tiles::<50>(rows, acts, out, 1.0, IQ1_DELTA, decode, scales)
}

/// IQ2_XXS [`tiles`]: values `w + 43` (`w` the signed grid value, at most 43 in magnitude);
/// each run's multiplier `ls` and correction `-43·ls`; `multiplier` 1/8 as in
/// [`dot_iq2xxs_avx512`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn tiles_iq2xxs(rows: &[u8], acts: &[Activations], out: &mut [f32]) -> bool {
    const WORD_INDEX: [u8; 64] = run_bytes::<true>();
    let table = table256(iq2xxs_codes(), 0);
    // SAFETY: 64 bytes from the 64-byte array.
    let word_index = unsafe { _mm512_loadu_si512(WORD_INDEX.as_ptr().cast()) };
    let values = |b: &[u8; 66]| {
        let block = iq2xxs_block(b, &table, word_index);
        let offset = _mm512_set1_epi8(43);
        std::array::from_fn(|p| _mm512_mask_sub_epi8(_mm512_add_epi8(offset, block.grid[p]), block.negative[p], offset, block.grid[p]))
    };
    let decode = |blocks: &[&[u8; 66]; TILE_ROWS], scratch: &mut [[__m512i; 16]; 4], tile: &mut [[__m512i; 16]; 4]| rows_transposed(blocks, scratch, tile, values);
    let scales = |base: *const u8, offsets: __m512i| {
        let runs: [(__m512i, __m512i); 8] = std::array::from_fn(|r| {
            // The run's scale in the top four bits of the dword at 6 + 8r.
            // SAFETY: bytes 6 + 8r..10 + 8r ≤ 66 lie inside each row's block.
            let ls = _mm512_add_epi32(_mm512_slli_epi32::<1>(_mm512_srli_epi32::<28>(unsafe { gather_rows(base, offsets, 6 + 8 * r) })), _mm512_set1_epi32(1));
            (ls, _mm512_mullo_epi32(ls, _mm512_set1_epi32(-43)))
        });
        TileScales::of(runs, base, offsets)
    };
    tiles::<66>(rows, acts, out, 0.125, 1.0, decode, scales)
}

/// IQ4_XS [`tiles`]: values `w + 128` (`w` the table's value, -127..113); each run's
/// multiplier its signed 6-bit scale `ls` and correction `-128·ls`. For the shared experts a
/// whole prompt goes through.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn tiles_iq4xs(rows: &[u8], acts: &[Activations], out: &mut [f32]) -> bool {
    // SAFETY: 16 bytes from the 16-entry table.
    let table = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()) });
    let values = |b: &[u8; 136]| std::array::from_fn(|p| _mm512_xor_si512(iq4xs_values(b, table, p), _mm512_set1_epi8(-128)));
    let decode = |blocks: &[&[u8; 136]; TILE_ROWS], scratch: &mut [[__m512i; 16]; 4], tile: &mut [[__m512i; 16]; 4]| rows_transposed(blocks, scratch, tile, values);
    let scales = |base: *const u8, offsets: __m512i| {
        // d and scales_h in the dword at 0, scales_l's four bytes in the dword at 4.
        // SAFETY: bytes 0..8 lie inside each row's 136-byte block.
        let (high, low) = unsafe { (_mm512_srli_epi32::<16>(gather_rows(base, offsets, 0)), gather_rows(base, offsets, 4)) };
        let runs: [(__m512i, __m512i); 8] = std::array::from_fn(|r| {
            let low4 = _mm512_and_si512(_mm512_srlv_epi32(low, _mm512_set1_epi32(4 * r as i32)), _mm512_set1_epi32(0x0F));
            let high2 = _mm512_and_si512(_mm512_srlv_epi32(high, _mm512_set1_epi32(2 * r as i32)), _mm512_set1_epi32(3));
            let ls = _mm512_sub_epi32(_mm512_or_si512(low4, _mm512_slli_epi32::<4>(high2)), _mm512_set1_epi32(32));
            (ls, _mm512_mullo_epi32(ls, _mm512_set1_epi32(-128)))
        });
        TileScales::of(runs, base, offsets)
    };
    tiles::<136>(rows, acts, out, 1.0, 1.0, decode, scales)
}

/// [`tiles`] for `format`'s sixteen rows `rows` (`TILE_ROWS` whole rows) and the activation
/// rows `acts`, into `out` (`out[r·m + i]`); `false` for a format without them or a CPU
/// without AVX-512 VBMI and VNNI.
pub(super) fn dot_tiles(format: Format, rows: &[u8], acts: &[Activations], out: &mut [f32]) -> bool {
    if !super::super::avx512::vbmi() {
        return false;
    }
    match format {
        // SAFETY: `vbmi` confirmed AVX-512 F, BW, VNNI and VBMI.
        Format::IQ1S => unsafe { tiles_iq1s(rows, acts, out) },
        // SAFETY: as above.
        Format::IQ2XXS => unsafe { tiles_iq2xxs(rows, acts, out) },
        // SAFETY: as above.
        Format::IQ4XS => unsafe { tiles_iq4xs(rows, acts, out) },
        _ => false,
    }
}

/// Each entry of an IQ2 grid (IQ2_XXS, IQ2_XS, IQ2_S) as 2-bit codes of its eight magnitudes
/// (8, 25, 43 → 0, 1, 2), value `j` in bits `2j..2j + 2`: a table of u16 the kernels look up
/// in registers.
fn iq2_codes(grid: &[[u8; 8]]) -> Vec<u16> {
    grid.iter().map(|entry| entry.iter().enumerate().fold(0u16, |code, (j, &v)| code | (u16::from(v > 8) + u16::from(v > 25)) << (2 * j))).collect()
}

/// [`iq2_codes`] of IQ2_XXS's 256-entry grid.
fn iq2xxs_codes() -> &'static [u16] {
    static CODES: OnceLock<Vec<u16>> = OnceLock::new();
    CODES.get_or_init(|| iq2_codes(&IQ2XXS_GRID))
}

/// [`iq2_codes`] of IQ2_XS's 512-entry grid.
fn iq2xs_codes() -> &'static [u16] {
    static CODES: OnceLock<Vec<u16>> = OnceLock::new();
    CODES.get_or_init(|| iq2_codes(&IQ2XS_GRID))
}

/// [`iq2_codes`] of IQ2_S's 1024-entry grid.
fn iq2s_codes() -> &'static [u16] {
    static CODES: OnceLock<Vec<u16>> = OnceLock::new();
    CODES.get_or_init(|| iq2_codes(&IQ2S_GRID))
}

/// The sign byte of each 7-bit sign code (`KSIGNS_IQ2XS`), as the bytes [`SIGN_BYTES`] spreads.
static SIGN_CODE_BYTES: [u8; 128] = {
    let mut table = [0u8; 128];
    let mut code = 0;
    while code < 128 {
        table[code] = code as u8 | ((code as u32).count_ones() as u8 & 1) << 7;
        code += 1;
    }
    table
};

/// The byte indices that gather, from a block's eight 8-byte runs, byte `4·run + entry` of the
/// run's four leading bytes (grid indices, or sign codes once extracted) into byte `k` (or,
/// `WIDE`, into the low byte of 16-bit lane `k`).
const fn run_bytes<const WIDE: bool>() -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut k = 0;
    while k < 32 {
        idx[if WIDE { 2 * k } else { k }] = (8 * (k / 4) + k % 4) as u8;
        k += 1;
    }
    idx
}

/// A block of a codebook format as the AVX-512 kernels multiply it: its 256 magnitudes as
/// unsigned bytes (values `64p..64p + 64` in vector `p`), bit `v` of word `p` set where value
/// `64p + v` is negative, and the scale of each 32-bit lane's four products.
struct Decoded {
    grid: [__m512i; 4],
    negative: [u64; 4],
    scales: [__m512i; 4],
}

/// The codebook formats' AVX-512 driver: each block decoded once ([`Decoded`]) for up to
/// [`ROWS_AT_ONCE`] activation rows, then, per row, 64 products in one `vpdpbusd` (the
/// activations negated where the weights are), scaled per lane and summed
/// ([`pairs_avx512`]). `PACKED` (the grids' formats, whose magnitudes are at most IQ3's 62):
/// each lane of four products is at most 4 · 62 · 127, within an i16, so two vectors' lanes
/// are packed to 16 bits, exactly, and scaled and summed by one `vpdpwssd` instead of two
/// multiplications and additions of i32 lanes. Every integer sum is the scalar code's, and
/// the f32 arithmetic per block is too; `multiplier` is the format's final factor.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn rows_avx512<const N: usize, const PACKED: bool>(row: &[u8], acts: &[Activations], out: &mut [f32], multiplier: f32, decode: impl Fn(&[u8; N]) -> Decoded) {
    // The scales packed as the products will be: vectors 2k and 2k + 1, 128-bit lane by lane.
    let decode = |b: &[u8; N]| {
        let block = decode(b);
        let packed = [_mm512_packs_epi32(block.scales[0], block.scales[1]), _mm512_packs_epi32(block.scales[2], block.scales[3])];
        (block, packed)
    };
    pairs_avx512(row, acts, out, 1.0, decode, |(block, packed), a, _| {
        let products: [__m512i; 4] = std::array::from_fn(|p| {
            // SAFETY: values 64p..64p + 64 lie inside the 256-value block.
            let av = unsafe { _mm512_loadu_si512(a.as_ptr().add(64 * p).cast()) };
            let signed = _mm512_mask_sub_epi8(av, block.negative[p], _mm512_setzero_si512(), av);
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), block.grid[p], signed)
        });
        if PACKED {
            let acc = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_packs_epi32(products[0], products[1]), packed[0]);
            _mm512_dpwssd_epi32(acc, _mm512_packs_epi32(products[2], products[3]), packed[1])
        } else {
            products.iter().zip(&block.scales).fold(_mm512_setzero_si512(), |acc, (p, s)| _mm512_add_epi32(acc, _mm512_mullo_epi32(*p, *s)))
        }
    });
    out.iter_mut().for_each(|o| *o *= multiplier);
}

/// The sums of the 16 i32 lanes of `v` and of `w`, as f32 (each rounded as `as f32` rounds).
#[inline]
#[target_feature(enable = "avx512f")]
fn sum_pair(v: __m512i, w: __m512i) -> (f32, f32) {
    // 128-bit quarters: v's halves summed in quarters 0, 1, w's in 2, 3; then within them.
    let t = _mm512_add_epi32(_mm512_shuffle_i64x2::<0b01_00_01_00>(v, w), _mm512_shuffle_i64x2::<0b11_10_11_10>(v, w));
    let t = _mm512_add_epi32(t, _mm512_shuffle_i64x2::<0b10_11_00_01>(t, t));
    let t = _mm512_add_epi32(t, _mm512_shuffle_epi32::<0b01_00_11_10>(t));
    let t = _mm512_cvtepi32_ps(_mm512_add_epi32(t, _mm512_shuffle_epi32::<0b10_11_00_01>(t)));
    (_mm512_cvtss_f32(t), _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(t)))
}

/// The AVX-512 codebook kernels' loop over a weight row and up to [`ROWS_AT_ONCE`] activation
/// rows at a time: each block decoded once (`decode`), then for each activation row its
/// integer products in 16 i32 lanes (`products`, given the block's activations and their
/// 16-value sums); two blocks' lanes are summed together
/// ([`sum_pair`]: half the shuffles of two sums), and each block adds, in order, the scalar
/// code's `d · d8 · (sum · inner)` to its row's result.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn pairs_avx512<const N: usize, B>(
    row: &[u8],
    acts: &[Activations],
    out: &mut [f32],
    inner: f32,
    decode: impl Fn(&[u8; N]) -> B,
    products: impl Fn(&B, &[i8; 256], &[i32; 16]) -> __m512i,
) {
    let (blocks, _) = row.as_chunks::<N>();
    for (acts, out) in acts.chunks(ROWS_AT_ONCE).zip(out.chunks_mut(ROWS_AT_ONCE)) {
        let q8: [Q8k<'_>; ROWS_AT_ONCE] = std::array::from_fn(|i| Q8k::of(acts.get(i)));
        out.iter_mut().for_each(|o| *o = 0.0);
        for (pair, two) in blocks.chunks(2).enumerate() {
            let (j, b0, b1) = (2 * pair, &two[0], two.get(1));
            let first = decode(b0);
            let second = b1.map(&decode);
            for (o, q8) in out.iter_mut().zip(&q8) {
                let Some((a, bsums, da)) = q8.block(j) else { continue };
                let sums = products(&first, a, bsums);
                match (b1, &second, q8.block(j + 1)) {
                    (Some(b1), Some(second), Some((a1, bsums1, da1))) => {
                        let (s0, s1) = sum_pair(sums, products(second, a1, bsums1));
                        *o += half(b0, 0) * da * (s0 * inner);
                        *o += half(b1, 0) * da1 * (s1 * inner);
                    }
                    _ => *o += half(b0, 0) * da * (sum_pair(sums, _mm512_setzero_si512()).0 * inner),
                }
            }
        }
    }
}

/// Looks up 32 entries of a 256-entry table of u16 held in eight registers: `index` holds the
/// entries' indices in its 16-bit lanes (below 256).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn lookup256(table: &[__m512i; 8], index: __m512i) -> __m512i {
    let quarter = |q: usize| _mm512_permutex2var_epi16(table[2 * q], index, table[2 * q + 1]);
    let bit6 = _mm512_test_epi16_mask(index, _mm512_set1_epi16(0x40));
    let bit7 = _mm512_test_epi16_mask(index, _mm512_set1_epi16(0x80));
    let low = _mm512_mask_blend_epi16(bit6, quarter(0), quarter(1));
    let high = _mm512_mask_blend_epi16(bit6, quarter(2), quarter(3));
    _mm512_mask_blend_epi16(bit7, low, high)
}

/// Entries `256t..256t + 256` of a u16 table in eight registers (zeros past its end).
#[inline]
#[target_feature(enable = "avx512f")]
fn table256(codes: &[u16], t: usize) -> [__m512i; 8] {
    std::array::from_fn(|r| match codes.get(256 * t + 32 * r..256 * t + 32 * r + 32) {
        // SAFETY: 64 bytes from the 32 entries just bounds-checked.
        Some(part) => unsafe { _mm512_loadu_si512(part.as_ptr().cast()) },
        None => _mm512_setzero_si512(),
    })
}

/// Looks up 32 entries of a table of `256·T` u16 ([`table256`] each quarter): `index` holds
/// the entries' indices in its 16-bit lanes (below `256·T`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn lookup<const T: usize>(tables: &[[__m512i; 8]; T], index: __m512i) -> __m512i {
    let mut found = lookup256(&tables[0], index);
    for (t, table) in tables.iter().enumerate().skip(1) {
        let here = _mm512_cmpeq_epi16_mask(_mm512_srli_epi16::<8>(index), _mm512_set1_epi16(t as i16));
        found = _mm512_mask_blend_epi16(here, found, lookup256(table, index));
    }
    found
}

/// The sign bits of 32 seven-bit sign codes (bytes 0..32 of `codes`, entry by entry): bit `v`
/// of word `p` for value `64p + v`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn sign_code_masks(codes: __m512i) -> [u64; 4] {
    // SAFETY: two 64-byte loads inside the 128-byte table.
    let sign_table = unsafe { [_mm512_loadu_si512(SIGN_CODE_BYTES.as_ptr().cast()), _mm512_loadu_si512(SIGN_CODE_BYTES.as_ptr().add(64).cast())] };
    let bytes = _mm512_permutex2var_epi8(sign_table[0], _mm512_and_si512(codes, _mm512_set1_epi8(0x7F)), sign_table[1]);
    let mut out = [0u64; 8];
    // SAFETY: 64 bytes into the 64-byte array.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), bytes) };
    [out[0], out[1], out[2], out[3]]
}

/// The sign codes at bits 0, 7, 14 and 21 of the low 32 bits of each 64-bit lane of `words`
/// (lane = run; IQ2_XXS, IQ3_XXS) as [`sign_code_masks`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn sign_words(words: __m512i) -> [u64; 4] {
    const BYTE_INDEX: [u8; 64] = run_bytes::<false>();
    // SAFETY: 64 bytes from the 64-byte array.
    let byte_index = unsafe { _mm512_loadu_si512(BYTE_INDEX.as_ptr().cast()) };
    sign_code_masks(_mm512_permutexvar_epi8(byte_index, _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x150E_0700), words)))
}

/// Explicit sign bits (IQ2_S, IQ3_S): 32 bytes, bit `j` of byte `k` for value `8k + j`.
#[inline(always)]
fn sign_bit_masks(bytes: &[u8]) -> [u64; 4] {
    std::array::from_fn(|p| bytes.get(8 * p..8 * p + 8).map_or(0, |w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])))
}

/// Two 4-bit scales per run (IQ2_XS, IQ2_S: byte `run`, low nibble for its first 16 values),
/// each `2·s + 1`, for vector `p`'s 32-bit lanes (four per 16 values).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn nibble_scales16(bytes: &[u8]) -> [__m512i; 4] {
    let v = bytes.get(..8).map_or(0, |w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
    let low = _mm_and_si128(_mm_set_epi64x(0, v as i64), _mm_set1_epi8(0x0F));
    let high = _mm_and_si128(_mm_set_epi64x(0, (v >> 4) as i64), _mm_set1_epi8(0x0F));
    let s = _mm_unpacklo_epi8(low, high);
    let ls = _mm512_cvtepu8_epi32(_mm_add_epi8(_mm_add_epi8(s, s), _mm_set1_epi8(1)));
    std::array::from_fn(|p| {
        let base = 4 * p as i32;
        _mm512_permutexvar_epi32(_mm512_set_epi32(base + 3, base + 3, base + 3, base + 3, base + 2, base + 2, base + 2, base + 2, base + 1, base + 1, base + 1, base + 1, base, base, base, base), ls)
    })
}

/// Each run's scale `2·s + 1`, `s` the top four bits of the low 64-bit lane word `run`, for
/// vector `p`'s 32-bit lanes (runs 2p and 2p + 1, eight lanes each).
#[inline]
#[target_feature(enable = "avx512f")]
fn run_scales(words: __m512i) -> [__m512i; 4] {
    let s = _mm512_and_si512(_mm512_srli_epi64::<28>(words), _mm512_set1_epi64(0xF));
    let ls = _mm512_add_epi64(_mm512_slli_epi64::<1>(s), _mm512_set1_epi64(1));
    std::array::from_fn(|p| _mm512_permutexvar_epi32(_mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(4 * p as i32), _mm512_set1_epi32(4 * p as i32 + 2)), ls))
}

/// The 256 magnitudes of a block of an IQ2 format from its 32 grid entries' 2-bit codes
/// (entry `k` in 16-bit lane `k` of `entries`): vector `p` spreads entries `8p..8p + 8`, one per
/// 64-bit lane (`vpmultishiftqb`), then maps each code to its magnitude (a byte shuffle).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn iq2_grid(entries: __m512i) -> [__m512i; 4] {
    let magnitudes = _mm512_broadcast_i32x4(_mm_setr_epi8(8, 25, 43, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
    std::array::from_fn(|p| {
        let spread = _mm512_add_epi16(_mm512_set1_epi16(8 * p as i16), _mm512_set_epi16(
            7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0,
        ));
        let fields = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x0E0C_0A08_0604_0200), _mm512_permutexvar_epi16(spread, entries));
        _mm512_shuffle_epi8(magnitudes, _mm512_and_si512(fields, _mm512_set1_epi8(3)))
    })
}

/// The 256 magnitudes of a block of an IQ3 format from its 64 grid entries' 3-bit codes
/// (entries `32h + k` in 16-bit lane `k` of `entries[h]`), each code mapped to `levels`: vector
/// `p` spreads entries `16p..16p + 16`, two per 64-bit lane, each twice so that one shift
/// control reads both (16-bit lanes `4j`, `4j + 1` hold entry `2j`, `4j + 2`, `4j + 3` entry
/// `2j + 1`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn iq3_grid(entries: [__m512i; 2], levels: &[u8; 8]) -> [__m512i; 4] {
    let mut table = [0u8; 16];
    table[..8].copy_from_slice(levels);
    // SAFETY: 16 bytes from the 16-byte array.
    let magnitudes = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(table.as_ptr().cast()) });
    std::array::from_fn(|p| {
        let spread = _mm512_add_epi16(_mm512_set1_epi16(16 * (p % 2) as i16), _mm512_set_epi16(
            15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0,
        ));
        let fields = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x2926_2320_0906_0300), _mm512_permutexvar_epi16(spread, entries[p / 2]));
        _mm512_shuffle_epi8(magnitudes, _mm512_and_si512(fields, _mm512_set1_epi8(7)))
    })
}

/// In 16-bit lane `k` (of 32; entry `k` of a block whose entries are four per run), byte
/// `k / 4` of `bytes` shifted right by `step · (k % 4)`: the high index bits of IQ2_S.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn per_entry_bits(bytes: __m128i, step: i16) -> __m512i {
    let run_of_lane = _mm512_set_epi16(
        7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0,
    );
    let shift = _mm512_mullo_epi16(_mm512_set1_epi16(step), _mm512_set_epi16(
        3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0,
    ));
    let words = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(bytes));
    _mm512_srlv_epi16(_mm512_permutexvar_epi16(run_of_lane, words), shift)
}

/// IQ2_XXS with AVX-512 VBMI and VNNI ([`rows_avx512`]). A block's 32 grid indices are looked
/// up in registers (the grid as 2-bit codes, [`iq2_codes`]) and spread over 256 bytes
/// ([`iq2_grid`]); the sign codes' bytes are looked up with `vpermi2b`. Bit-identical to
/// [`dot_iq2xxs`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn dot_iq2xxs_avx512(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    const WORD_INDEX: [u8; 64] = run_bytes::<true>();
    let table = table256(iq2xxs_codes(), 0);
    // SAFETY: 64 bytes from the 64-byte array.
    let word_index = unsafe { _mm512_loadu_si512(WORD_INDEX.as_ptr().cast()) };
    rows_avx512::<66, true>(row, acts, out, 0.125, |b| iq2xxs_block(b, &table, word_index))
}

/// Decodes an IQ2_XXS block ([`dot_iq2xxs_avx512`]): `table` its grid's codes
/// ([`table256`] of [`iq2xxs_codes`]), `word_index` [`run_bytes`]`::<true>`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn iq2xxs_block(b: &[u8; 66], table: &[__m512i; 8], word_index: __m512i) -> Decoded {
    // Run ib in 64-bit lane ib: four grid indices, then 4 × 7 sign-code bits and a 4-bit
    // scale. SAFETY: bytes 2..66 lie inside the 66-byte block.
    let runs = unsafe { _mm512_loadu_si512(b.as_ptr().add(2).cast()) };
    // Entry k = 4·run + l's codes, in 16-bit lane k.
    let entries = lookup256(table, _mm512_maskz_permutexvar_epi8(0x5555_5555_5555_5555, word_index, runs));
    let words = _mm512_srli_epi64::<32>(runs);
    Decoded { grid: iq2_grid(entries), negative: sign_words(words), scales: run_scales(words) }
}

/// IQ2_XS with AVX-512 VBMI and VNNI ([`rows_avx512`]): 32 u16 per block, a 9-bit grid index
/// (512 entries, two register tables) and a 7-bit sign code each; two scales per run.
/// Bit-identical to [`dot_iq2xs`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn dot_iq2xs_avx512(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    let tables = [table256(iq2xs_codes(), 0), table256(iq2xs_codes(), 1)];
    rows_avx512::<74, true>(row, acts, out, 0.125, |b| {
        // SAFETY: bytes 2..66 lie inside the 74-byte block.
        let q = unsafe { _mm512_loadu_si512(b.as_ptr().add(2).cast()) };
        let entries = lookup(&tables, _mm512_and_si512(q, _mm512_set1_epi16(511)));
        let codes = _mm512_castsi256_si512(_mm512_cvtepi16_epi8(_mm512_srli_epi16::<9>(q)));
        Decoded { grid: iq2_grid(entries), negative: sign_code_masks(codes), scales: nibble_scales16(&b[66..74]) }
    })
}

/// IQ2_S with AVX-512 VBMI and VNNI ([`rows_avx512`]): 10-bit grid indices (eight bits, two
/// more from `qh`; 1024 entries, four register tables), explicit sign bits, two scales per run.
/// Bit-identical to [`dot_iq2s`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn dot_iq2s_avx512(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    let codes = iq2s_codes();
    let tables = [table256(codes, 0), table256(codes, 1), table256(codes, 2), table256(codes, 3)];
    rows_avx512::<82, true>(row, acts, out, 0.125, |b| {
        // SAFETY: bytes 2..34 (low index bytes) and 66..74 (high bits) lie inside the block.
        let (low, qh) = unsafe { (_mm256_loadu_si256(b.as_ptr().add(2).cast()), _mm_loadl_epi64(b.as_ptr().add(66).cast())) };
        let high = _mm512_and_si512(per_entry_bits(qh, 2), _mm512_set1_epi16(3));
        let entries = lookup(&tables, _mm512_or_si512(_mm512_cvtepu8_epi16(low), _mm512_slli_epi16::<8>(high)));
        Decoded { grid: iq2_grid(entries), negative: sign_bit_masks(&b[34..66]), scales: nibble_scales16(&b[74..82]) }
    })
}

/// Each IQ3_XXS grid entry's four magnitudes (4, 12, …, 52, 62) as 3-bit codes, value `j` in
/// bits `3j..3j + 3`.
fn iq3xxs_codes() -> &'static [u16] {
    static CODES: OnceLock<Vec<u16>> = OnceLock::new();
    CODES.get_or_init(|| iq3_codes(&IQ3XXS_GRID, &IQ3XXS_LEVELS))
}

/// Each IQ3_S grid entry's four magnitudes (1, 3, …, 15) as 3-bit codes.
fn iq3s_codes() -> &'static [u16] {
    static CODES: OnceLock<Vec<u16>> = OnceLock::new();
    CODES.get_or_init(|| iq3_codes(&IQ3S_GRID, &IQ3S_LEVELS))
}

/// Each entry of an IQ3 grid as the 3-bit codes of its four magnitudes (their places in
/// `levels`), value `j` in bits `3j..3j + 3`.
fn iq3_codes(grid: &[[u8; 4]], levels: &[u8; 8]) -> Vec<u16> {
    grid.iter().map(|entry| entry.iter().enumerate().fold(0u16, |code, (j, &v)| code | (levels.iter().position(|&l| l == v).unwrap_or(0) as u16) << (3 * j))).collect()
}

/// The eight magnitudes of IQ3_XXS's grid, and of IQ3_S's.
const IQ3XXS_LEVELS: [u8; 8] = [4, 12, 20, 28, 36, 44, 52, 62];
const IQ3S_LEVELS: [u8; 8] = [1, 3, 5, 7, 9, 11, 13, 15];

/// IQ3_XXS with AVX-512 VBMI and VNNI ([`rows_avx512`]): as [`dot_iq2xxs_avx512`], with 64
/// grid entries of four 3-bit codes per block ([`iq3_grid`]). Bit-identical to [`dot_iq3xxs`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn dot_iq3xxs_avx512(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    let table = table256(iq3xxs_codes(), 0);
    rows_avx512::<98, true>(row, acts, out, 0.25, |b| {
        // SAFETY: bytes 2..66 (grid indices) and 66..98 (sign codes and scales) lie inside the
        // 98-byte block.
        let (indices, aux) = unsafe { (_mm512_loadu_si512(b.as_ptr().add(2).cast()), _mm256_loadu_si256(b.as_ptr().add(66).cast())) };
        let entries = [
            lookup256(&table, _mm512_cvtepu8_epi16(_mm512_castsi512_si256(indices))),
            lookup256(&table, _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64::<1>(indices))),
        ];
        let words = _mm512_cvtepu32_epi64(aux);
        Decoded { grid: iq3_grid(entries, &IQ3XXS_LEVELS), negative: sign_words(words), scales: run_scales(words) }
    })
}

/// IQ3_S with AVX-512 VBMI and VNNI ([`rows_avx512`]): 64 entries of a 512-entry grid (eight
/// index bits, the ninth from `qh`: bit `k` of `qh[run]` for the run's entry `k`), explicit sign
/// bits, one scale per run. Bit-identical to [`dot_iq3s`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn dot_iq3s_avx512(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    let codes = iq3s_codes();
    let tables = [table256(codes, 0), table256(codes, 1)];
    // In 16-bit lane k of half h: entry 32h + k, of run 4h + k / 8, ninth bit k % 8 of its qh.
    let run_of_lane: [__m512i; 2] = std::array::from_fn(|h| _mm512_add_epi16(_mm512_set1_epi16(4 * h as i16), _mm512_set_epi16(
        3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0,
    )));
    let bit_of_lane = _mm512_set_epi16(
        7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0,
    );
    rows_avx512::<110, true>(row, acts, out, 1.0, |b| {
        // SAFETY: bytes 2..66 (low index bytes) and 66..74 (ninth bits) lie inside the block.
        let (low, qh) = unsafe { (_mm512_loadu_si512(b.as_ptr().add(2).cast()), _mm_loadl_epi64(b.as_ptr().add(66).cast())) };
        let qh = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(qh));
        let entries: [__m512i; 2] = std::array::from_fn(|h| {
            let low = _mm512_cvtepu8_epi16(if h == 0 { _mm512_castsi512_si256(low) } else { _mm512_extracti64x4_epi64::<1>(low) });
            let ninth = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi16(run_of_lane[h], qh), bit_of_lane), _mm512_set1_epi16(1));
            lookup(&tables, _mm512_or_si512(low, _mm512_slli_epi16::<8>(ninth)))
        });
        let ls: [i32; 8] = std::array::from_fn(|ib| 2 * i32::from((b[106 + ib / 2] >> (4 * (ib % 2))) & 0x0F) + 1);
        let scales = std::array::from_fn(|p| _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(ls[2 * p]), _mm512_set1_epi32(ls[2 * p + 1])));
        Decoded { grid: iq3_grid(entries, &IQ3S_LEVELS), negative: sign_bit_masks(&b[74..106]), scales }
    })
}

/// Values `64p..64p + 64` of an IQ4_XS block (runs 2p and 2p + 1) as signed bytes, looked up
/// in `values` (the non-linear table in each 128-bit lane).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn iq4xs_values(b: &[u8; 136], values: __m512i, p: usize) -> __m512i {
    // Runs 2p and 2p + 1: 16 bytes each, the low nibbles their first 16 values.
    // SAFETY: bytes 8 + 32p..8 + 32p + 32 lie inside the 136-byte block (p < 4).
    let q = unsafe { _mm256_loadu_si256(b.as_ptr().add(8 + 32 * (p % 4)).cast()) };
    let low = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(q), _mm256_set1_epi8(0x0F));
    // 128-bit lanes low₀ high₀ low₁ high₁: run 2p's values, then run 2p + 1's.
    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high);
    _mm512_shuffle_epi8(values, _mm512_shuffle_i64x2::<0b11_01_10_00>(both, both))
}

/// IQ4_XS with AVX-512 VBMI and VNNI ([`pairs_avx512`]), for one activation row (decoding) and
/// for the shared experts a whole prompt goes through. Each 64 bytes of nibbles (runs 4h..4h + 3)
/// are looked up whole, low nibbles, then high ones shifted down, by `vpermb` in the table plus
/// 128 (unsigned, 1..241) repeated over its 64 entries, which reads six bits of each index: no
/// masking. 128-bit lane `r` of the low vector holds run 4h + r's first 16 values, of the high
/// one its last 16, and the activations are shuffled to match. Per lane, the scale of its run
/// times its products, less 128 · the scale times the activations' 16-value sums: the block's
/// integer sum is the scalar code's exactly (at most 256 · 241 · 128 · 32 in magnitude, within
/// an i32, as is every partial sum). Bit-identical to [`dot_iq4xs`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn dot_iq4xs_avx512(row: &[u8], acts: &[Activations], out: &mut [f32]) {
    pairs_avx512(row, acts, out, 1.0, |b| iq4xs_block(b), |block, a, sums| iq4xs_products(block, iq4xs_split(a), sums));
}

/// [`dot_iq4xs_avx512`] for one activation row (decoding), without the loop over rows: the
/// same integer sums, and the same f32 arithmetic block after block; the activations in
/// [`Activations::runs_split`]'s order where it is filled, else shuffled here. One thread, an
/// IQ4_XS 2048×7168: 36.8 GMAC/s in cache and 16.8 GB/s from memory (shuffled here, 32.8 and
/// 15.9; without the prefetches, 34 and 14.7; through the loop over rows, 30 and 13.7; with
/// the weights' signs moved onto the activations, 20 and 10.1).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn dot_iq4xs_avx512_one(row: &[u8], act: &Activations) -> f32 {
    // A row (3808 bytes for 7168 columns) is less than a page: the next pages started early.
    _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(super::super::avx512::PREFETCH_AHEAD).cast());
    let (blocks, _) = row.as_chunks::<136>();
    let split = act.runs_split.len() == act.qs.len();
    let mut blocks = blocks.iter().zip(q8k(act)).enumerate();
    let products = |j: usize, b: &[u8; 136], a: &[i8; 256], sums: &[i32; 16]| {
        let block = iq4xs_block(b);
        match act.runs_split.as_chunks::<256>().0.get(j) {
            // SAFETY: 256 values.
            Some(a) if split => iq4xs_products(&block, std::array::from_fn(|k| unsafe { _mm512_loadu_si512(a.as_ptr().add(64 * k).cast()) }), sums),
            _ => iq4xs_products(&block, iq4xs_split(a), sums),
        }
    };
    let mut sum = 0f32;
    while let Some((j0, (b0, ((a0, sums0), &da0)))) = blocks.next() {
        // The lines of the pair of blocks BLOCK_AHEAD bytes on (272 bytes: five lines at most).
        for line in 0..5 {
            _mm_prefetch::<_MM_HINT_T0>(b0.as_ptr().wrapping_add(BLOCK_AHEAD + 64 * line).cast());
        }
        let first = products(j0, b0, a0, sums0);
        match blocks.next() {
            Some((j1, (b1, ((a1, sums1), &da1)))) => {
                let (s0, s1) = sum_pair(first, products(j1, b1, a1, sums1));
                sum += half(b0, 0) * da0 * s0;
                sum += half(b1, 0) * da1 * s1;
            }
            None => sum += half(b0, 0) * da0 * sum_pair(first, _mm512_setzero_si512()).0,
        }
    }
    sum
}

/// How far ahead of its pair of blocks [`dot_iq4xs_avx512_one`] prefetches every line. Without
/// it the kernel's reading from memory depends on where its code lies (the hardware
/// prefetchers learn by the loads' addresses): the same instructions read an IQ4_XS 2048×7168
/// at 16 GB/s in one build and 11.6 in another, one thread; with it, 16 GB/s in both builds
/// tried, at 3.5 % of the speed in cache (34.0 → 32.8 GMAC/s).
const BLOCK_AHEAD: usize = 2048;

/// An IQ4_XS block as [`dot_iq4xs_avx512`] multiplies it: the weights plus 128 of runs
/// 4h..4h + 3, first 16 values of each run (`weights[h][0]`) and last 16 (`weights[h][1]`),
/// 128-bit lane `r` for run 4h + r; each 32-bit lane's run scale (`scales[h]`); and 128 times
/// the scale of the run of each of the activations' 16-value sums.
struct Iq4xs {
    weights: [[__m512i; 2]; 2],
    scales: [__m512i; 2],
    sum_scales: __m512i,
}

/// Decodes an IQ4_XS block ([`Iq4xs`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn iq4xs_block(b: &[u8; 136]) -> Iq4xs {
    // The table plus 128 (the sign bit flipped) in each 16 bytes.
    // SAFETY: 16 bytes from the 16-entry table.
    let table = _mm512_xor_si512(_mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()) }), _mm512_set1_epi8(-128));
    // Lane j of the 16-value sums' scales is run j / 2's: its four low bits at bit 4(j / 2) of
    // the u32 at byte 4, its two high bits at bit 16 + 2(j / 2) of the u32 at byte 0 (moved to
    // bits 4-5).
    let low_shift = _mm512_set_epi32(28, 28, 24, 24, 20, 20, 16, 16, 12, 12, 8, 8, 4, 4, 0, 0);
    let high_shift = _mm512_set_epi32(26, 26, 24, 24, 22, 22, 20, 20, 18, 18, 16, 16, 14, 14, 12, 12);
    // The runs' scales from lanes 2r: four lanes per run, runs 0..3 and 4..7.
    let runs = [
        _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0),
        _mm512_set_epi32(14, 14, 14, 14, 12, 12, 12, 12, 10, 10, 10, 10, 8, 8, 8, 8),
    ];
    // SAFETY: bytes 0..8 and 8..136 lie inside the 136-byte block.
    let (head, q) = unsafe { (b.as_ptr().cast::<i32>(), [_mm512_loadu_si512(b.as_ptr().add(8).cast()), _mm512_loadu_si512(b.as_ptr().add(72).cast())]) };
    // SAFETY: as above (unaligned reads of bytes 0..4 and 4..8).
    let (h, l) = unsafe { (_mm512_set1_epi32(head.read_unaligned()), _mm512_set1_epi32(head.add(1).read_unaligned())) };
    // Bits 0-3 the low bits, 4-5 the high ones; moved to the top six bits, less 32 there (the
    // sign bit flipped), then shifted down with their sign: the scale, and 128 times it.
    let six = _mm512_ternarylogic_epi32::<0xD8>(_mm512_srlv_epi32(h, high_shift), _mm512_srlv_epi32(l, low_shift), _mm512_set1_epi32(0x0F));
    let top = _mm512_xor_si512(_mm512_slli_epi32::<26>(six), _mm512_set1_epi32(i32::MIN));
    let scales = _mm512_srai_epi32::<26>(top);
    Iq4xs {
        weights: q.map(|q| [_mm512_permutexvar_epi8(q, table), _mm512_permutexvar_epi8(_mm512_srli_epi16::<4>(q), table)]),
        scales: runs.map(|r| _mm512_permutexvar_epi32(r, scales)),
        sum_scales: _mm512_srai_epi32::<19>(top),
    }
}

/// A block's 256 Q8_K activations in the order of [`Activations::runs_split`]: vectors
/// `2h` and `2h + 1` the first and the last 16 values of runs 4h..4h + 3.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn iq4xs_split(a: &[i8; 256]) -> [__m512i; 4] {
    // SAFETY: values 0..256 lie inside the block.
    let av: [__m512i; 4] = std::array::from_fn(|k| unsafe { _mm512_loadu_si512(a.as_ptr().add(64 * k).cast()) });
    std::array::from_fn(|k| {
        let (a0, a1) = (av[k / 2 * 2], av[k / 2 * 2 + 1]);
        if k % 2 == 0 { _mm512_shuffle_i64x2::<0b10_00_10_00>(a0, a1) } else { _mm512_shuffle_i64x2::<0b11_01_11_01>(a0, a1) }
    })
}

/// Σ sc·w·a over a decoded IQ4_XS block ([`iq4xs_block`]), its 256 Q8_K activations in the
/// order of [`iq4xs_split`] and their 16-value sums, in 16 i32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn iq4xs_products(block: &Iq4xs, av: [__m512i; 4], bsums: &[i32; 16]) -> __m512i {
    // SAFETY: the block's 16 sums, 64 bytes.
    let sums = unsafe { _mm512_loadu_si512(bsums.as_ptr().cast()) };
    let offset = _mm512_mullo_epi32(sums, block.sum_scales);
    let runs: [__m512i; 2] = std::array::from_fn(|h| {
        let low = _mm512_dpbusd_epi32(_mm512_setzero_si512(), block.weights[h][0], av[2 * h]);
        let both = _mm512_dpbusd_epi32(low, block.weights[h][1], av[2 * h + 1]);
        _mm512_mullo_epi32(both, block.scales[h])
    });
    _mm512_sub_epi32(_mm512_add_epi32(runs[0], runs[1]), offset)
}
