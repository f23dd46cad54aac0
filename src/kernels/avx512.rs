//! AVX-512 VNNI kernels over weights repacked into strips of sixteen rows ([`super::strips`]),
//! chosen at run time, for decoding (one activation row) and prefill (several at a time).
//!
//! A strip's tile puts four values of each of its sixteen rows in each 32-bit lane, so
//! `vpdpbusd` (unsigned weight bytes × signed activation bytes, four products added to each
//! lane) against four activation bytes broadcast to every lane gives the sixteen rows' sums
//! side by side. A tile's weights are unpacked (nibbles to bytes, fifth and sixth bits added)
//! once and multiplied against a group of activation rows, so prefill unpacks each weight once
//! per group rather than once per row.
//!
//! Every result is bit-identical to [`super::blocks::dot_scalar`]: each block's integer sum is
//! exact (`vpdpbusd` neither saturates nor rounds, and integer addition is associative), and
//! each row's lane then does the scalar code's f32 arithmetic, one operation for one operation
//! (no fused multiply-adds), block after block. Weights stored with an offset (Q4_0's 8,
//! Q5_0's 16, Q6_K's 32, and Q8_0 stored plus 128 to make its bytes unsigned) are summed
//! unsigned and the offset taken off exactly through the activations' sums, as the AVX2
//! kernels do ([`super::x86`]).

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::blocks::{Activations, Format};
use super::strips::{self, ROWS};

/// Whether this CPU has AVX-512 F and BW and AVX-512 VNNI. Detected once.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni"))
}

/// Whether this CPU also has AVX-512 VBMI (byte permutes and `vpmultishiftqb`), which the
/// codebook formats' kernels use to look up and spread their grids in registers.
pub(super) fn vbmi() -> bool {
    static VBMI: OnceLock<bool> = OnceLock::new();
    *VBMI.get_or_init(|| available() && is_x86_feature_detected!("avx512vbmi"))
}

/// Activation rows multiplied together, sharing each unpacked tile. Four keep the
/// accumulators, the unpacked weights and the broadcasts within the 32 vector registers.
const GROUP: usize = 4;

/// One quantized activation row as the kernels read it.
pub(super) struct ActRow<'a> {
    /// The 8-bit values, four at a time (the bytes one `vpdpbusd` broadcasts).
    words: &'a [[i8; 4]],
    /// Scale of each block.
    d: &'a [f32],
    /// Q8_1: the scaled sum of each block (met by Q4_1/Q5_1 minimums).
    s: &'a [f32],
    /// Per block: Q4_0, Q5_0, Q8_0: the offset times the block's sum (`offset · Σa`); Q4_K,
    /// Q5_K: the four pairs of 32-value sums, two i16s per i32; Q6_K: the eight pairs of
    /// 16-value sums, likewise.
    extra: Vec<i32>,
}

/// The offset taken off a 32-value format's unsigned weights (Q8_0's are stored plus 128).
fn offset(format: Format) -> i32 {
    match format {
        Format::Q4_0 => 8,
        Format::Q5_0 => 16,
        Format::Q8_0 => 128,
        _ => 0,
    }
}

/// Two i16s in one i32: `lo` in the low half.
fn pair(lo: i32, hi: i32) -> i32 {
    (u32::from(lo as u16) | u32::from(hi as u16) << 16) as i32
}

/// The rows of `acts` as the kernels for `format` read them.
pub(super) fn prepare(format: Format, acts: &[Activations]) -> Vec<ActRow<'_>> {
    acts.iter()
        .map(|a| {
            let extra = match format {
                // Wrapping, as the AVX2 kernels: only activations too small to quantize (whose
                // scale is zero) can have sums that overflow.
                Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => a.s.iter().map(|&s| (s as i32).wrapping_mul(offset(format))).collect(),
                Format::Q4K | Format::Q5K => a
                    .bsums
                    .chunks_exact(4)
                    .map(|b| pair(b[0] + b[1], b[2] + b[3]))
                    .collect(),
                Format::Q6K => a.bsums.chunks_exact(2).map(|b| pair(b[0], b[1])).collect(),
                _ => Vec::new(),
            };
            ActRow { words: a.qs.as_chunks::<4>().0, d: &a.d, s: &a.s, extra }
        })
        .collect()
}

/// `out` = the strips' rows · each activation row, laid out `[acts.len()][strips × 16]`.
/// `strips` holds whole strips of a matrix of `cols` columns in `format`. Returns `false`
/// (with `out` untouched) when this CPU lacks AVX-512 VNNI or the sizes do not match.
pub(super) fn matmul(format: Format, strips: &[u8], cols: usize, acts: &[ActRow], out: &mut [f32]) -> bool {
    let (per_block, _) = format.block();
    let blocks = cols / per_block;
    let strip_bytes = blocks * strips::tile_bytes(format);
    let per_block_extra = match format {
        Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => 1,
        Format::Q4K | Format::Q5K => 4,
        Format::Q6K => 8,
        _ => 0,
    };
    let fits = |a: &ActRow| {
        a.words.len() >= blocks * per_block / 4
            && a.d.len() >= blocks
            && (!matches!(format, Format::Q4_1 | Format::Q5_1) || a.s.len() >= blocks)
            && a.extra.len() >= blocks * per_block_extra
    };
    if !available() || blocks == 0 || !strips.len().is_multiple_of(strip_bytes) || out.len() != acts.len() * strips.len() / strip_bytes * ROWS || !acts.iter().all(fits) {
        return false;
    }
    // SAFETY: these functions need AVX-512 F, BW and VNNI, which `available` has confirmed.
    unsafe {
        match format {
            Format::Q4_0 => run(strips, blocks, acts, out, strip_32::<288, false, false, false, 8, GROUP>, strip_32::<288, false, false, false, 8, 1>),
            Format::Q4_1 => run(strips, blocks, acts, out, strip_32::<320, true, false, false, 0, GROUP>, strip_32::<320, true, false, false, 0, 1>),
            Format::Q5_0 => run(strips, blocks, acts, out, strip_32::<352, false, true, false, 16, GROUP>, strip_32::<352, false, true, false, 16, 1>),
            Format::Q5_1 => run(strips, blocks, acts, out, strip_32::<384, true, true, false, 0, GROUP>, strip_32::<384, true, true, false, 0, 1>),
            Format::Q8_0 => run(strips, blocks, acts, out, strip_32::<544, false, false, true, 128, GROUP>, strip_32::<544, false, false, true, 128, 1>),
            Format::Q4K => run(strips, blocks, acts, out, strip_q45k::<2368, false, GROUP>, strip_q45k::<2368, false, 1>),
            Format::Q5K => run(strips, blocks, acts, out, strip_q45k::<2880, true, GROUP>, strip_q45k::<2880, true, 1>),
            Format::Q6K => run(strips, blocks, acts, out, strip_q6k::<GROUP>, strip_q6k::<1>),
            // Formats never repacked (`strips::supported`).
            _ => return false,
        }
    }
    true
}

/// A kernel: one strip's tiles (`N` bytes each) times `C` activation rows, sixteen results
/// per row.
type Kernel<const N: usize, const C: usize> = unsafe fn(&[[u8; N]], [&ActRow; C]) -> [[f32; ROWS]; C];

/// Runs `group` over every strip and each [`GROUP`] activation rows, and `one` over the rows
/// left.
///
/// # Safety
/// The kernels must be callable on this CPU.
unsafe fn run<const N: usize>(strips: &[u8], blocks: usize, acts: &[ActRow], out: &mut [f32], group: Kernel<N, GROUP>, one: Kernel<N, 1>) {
    let (tiles, _) = strips.as_chunks::<N>();
    let width = tiles.len() / blocks * ROWS;
    for (s, strip) in tiles.chunks_exact(blocks).enumerate() {
        let mut store = |i: usize, sums: &[f32; ROWS]| {
            if let Some(o) = out.get_mut(i * width + s * ROWS..i * width + (s + 1) * ROWS) {
                o.copy_from_slice(sums);
            }
        };
        let (groups, rest) = acts.as_chunks::<GROUP>();
        for (g, rows) in groups.iter().enumerate() {
            // SAFETY: the caller vouches for the CPU.
            let sums = unsafe { group(strip, std::array::from_fn(|c| &rows[c])) };
            for (c, sums) in sums.iter().enumerate() {
                store(g * GROUP + c, sums);
            }
        }
        for (c, row) in rest.iter().enumerate() {
            // SAFETY: as above.
            let [sums] = unsafe { one(strip, [row]) };
            store(groups.len() * GROUP + c, &sums);
        }
    }
}

// ----------------------------------------------------------------------------------------
// Reading tiles and activations.

/// The 64 bytes of `t` from `at` on.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn v64<const N: usize>(t: &[u8; N], at: usize) -> __m512i {
    let bytes = &t[at..at + 64];
    // SAFETY: `bytes` is 64 readable bytes; the load has no alignment requirement.
    unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
}

/// The 32 bytes of `t` from `at` on.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn v32<const N: usize>(t: &[u8; N], at: usize) -> __m256i {
    let bytes = &t[at..at + 32];
    // SAFETY: `bytes` is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// The 16 bytes of `t` from `at` on.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn v16<const N: usize>(t: &[u8; N], at: usize) -> __m128i {
    let bytes = &t[at..at + 16];
    // SAFETY: `bytes` is 16 readable bytes; the load has no alignment requirement.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

/// The sixteen f16s at `at`, widened to f32 (exactly, as `half` does).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn f16x16<const N: usize>(t: &[u8; N], at: usize) -> __m512 {
    _mm512_cvtph_ps(v32(t, at))
}

/// The 64-bit mask at `at`.
#[inline]
fn mask<const N: usize>(t: &[u8; N], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&t[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Four activation bytes in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn broadcast(word: [i8; 4]) -> __m512i {
    _mm512_set1_epi32(i32::from_ne_bytes(word.map(|b| b as u8)))
}

/// Σ over four-byte groups: lane `r` gains row `r`'s `w · a` for each of the `K` vectors.
/// `split`: in two chains of `vpdpbusd` rather than one, halving the latency a lone
/// activation row (decoding) waits on; several rows (prefill) keep the units busy anyway.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_words<const K: usize>(w: &[__m512i; K], a: &[[i8; 4]], split: bool) -> __m512i {
    let mut sums = [_mm512_setzero_si512(); 2];
    for (k, (w, a)) in w.iter().zip(a).enumerate() {
        let sum = &mut sums[if split { k % 2 } else { 0 }];
        *sum = _mm512_dpbusd_epi32(*sum, *w, broadcast(*a));
    }
    if split { _mm512_add_epi32(sums[0], sums[1]) } else { sums[0] }
}

/// Sixteen f32 lanes as an array.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn lanes(v: __m512) -> [f32; ROWS] {
    // SAFETY: sixteen f32 lanes are sixteen f32s; every bit pattern is a valid f32.
    unsafe { std::mem::transmute::<__m512, [f32; ROWS]>(v) }
}

// ----------------------------------------------------------------------------------------
// Kernels.

/// The 32-value formats, tiles of `N` bytes: `MIN` (Q4_1, Q5_1) a minimum met by the
/// activations' scaled sum; `FIVE` (Q5_0, Q5_1) fifth bits; `EIGHT` (Q8_0) bytes rather than
/// nibbles; `OFFSET` taken off the unsigned weights. Per block and row, as the scalar code:
/// `sum += sumi as f32 * (d_w * d_a)` (`+ m_w * s_a` with a minimum).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn strip_32<const N: usize, const MIN: bool, const FIVE: bool, const EIGHT: bool, const OFFSET: i32, const C: usize>(
    tiles: &[[u8; N]],
    acts: [&ActRow; C],
) -> [[f32; ROWS]; C] {
    const { assert!(N == 32 + 32 * MIN as usize + 64 * FIVE as usize + if EIGHT { 512 } else { 256 }) };
    let qh_at = 32 + 32 * MIN as usize;
    let qs_at = qh_at + 64 * FIVE as usize;
    let low4 = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); C];
    for (b, t) in tiles.iter().enumerate() {
        let w: [__m512i; 8] = if EIGHT {
            std::array::from_fn(|g| v64(t, qs_at + 64 * g))
        } else {
            // Vector h: values 4h.. in its low nibbles, 16 + 4h.. in its high ones.
            let v: [__m512i; 4] = std::array::from_fn(|h| v64(t, qs_at + 64 * h));
            std::array::from_fn(|g| {
                let w = if g < 4 { _mm512_and_si512(v[g], low4) } else { _mm512_and_si512(_mm512_srli_epi16::<4>(v[g - 4]), low4) };
                // Plus 16 where the fifth bit is set (a nibble has no bit 4 to carry into).
                if FIVE { _mm512_mask_add_epi8(w, mask(t, qh_at + 8 * g), w, bit4) } else { w }
            })
        };
        let dw = f16x16(t, 0);
        let mw = if MIN { f16x16(t, 32) } else { dw };
        for (acc, a) in acc.iter_mut().zip(acts) {
            let mut sumi = dot_words(&w, &a.words[8 * b..8 * b + 8], C == 1);
            if OFFSET != 0 {
                sumi = _mm512_sub_epi32(sumi, _mm512_set1_epi32(a.extra[b]));
            }
            let mut term = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), _mm512_mul_ps(dw, _mm512_set1_ps(a.d[b])));
            if MIN {
                term = _mm512_add_ps(term, _mm512_mul_ps(mw, _mm512_set1_ps(a.s[b])));
            }
            *acc = _mm512_add_ps(*acc, term);
        }
    }
    acc.map(|v| lanes(v))
}

/// How far ahead of its tile the Q4_K and Q6_K kernels prefetch one line, once per tile (and
/// the IQ4_XS one-row kernel once per row: 15.2 → 16.1 GB/s). The hardware prefetchers stop at
/// each 4 KiB page, so decoding (a lone activation row, which reads the weights from memory)
/// waits at every page for the first line and the address translation; a line two pages
/// ahead, touched once per tile (a tile is less than a page), starts every page early. One
/// thread, Q4_K 18432×7168 m=1 from memory: 18.4 → 21.9 GB/s (4096 to 12288 bytes ahead all
/// gain; every line of the tile two ahead did not; Q5_K, whose kernel does more per byte,
/// 20.7 → 19.8, so it does without).
pub(super) const PREFETCH_AHEAD: usize = 8192;

/// Q4_K (`FIVE` false, tiles of 2368 bytes) and Q5_K (2880): eight sub-blocks of 32 with 6-bit
/// scales and minimums. Per block and row, as the scalar code:
/// `sum += (d_w·d_a) · Σ sc·(w·a) − (dmin_w·d_a) · Σ m·Σa`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn strip_q45k<const N: usize, const FIVE: bool, const C: usize>(tiles: &[[u8; N]], acts: [&ActRow; C]) -> [[f32; ROWS]; C] {
    const { assert!(N == 320 + 512 * FIVE as usize + 2048) };
    let low4 = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); C];
    for (b, t) in tiles.iter().enumerate() {
        if !FIVE {
            _mm_prefetch::<_MM_HINT_T0>(t.as_ptr().wrapping_add(PREFETCH_AHEAD).cast());
        }
        // The rows' d and dmin, and the minimums in 16-bit pairs (met by the activations'
        // pairs of 32-value sums), from the tile's first lines. Decoding, which reads the tile from
        // memory, reads those first: the lines in order, as the prefetchers follow them (one
        // thread, Q4_K 18432×7168 m=1 from memory: 21.6 → 24.1 GB/s). Prefill, whose four
        // activation rows need the registers, reads them last.
        let head = || (f16x16(t, 0), f16x16(t, 32), std::array::from_fn::<__m512i, 4, _>(|k| _mm512_cvtepu8_epi16(v32(t, 192 + 32 * k))));
        let early = (C == 1).then(head);
        let mut sumi = [_mm512_setzero_si512(); C];
        for c in 0..4 {
            // Sub-block 2c in the low nibbles, 2c + 1 in the high ones.
            let v: [__m512i; 8] = std::array::from_fn(|g| v64(t, strips::q45k_nibbles_at(FIVE, c, g)));
            for high in [false, true] {
                let s = 2 * c + high as usize;
                let w: [__m512i; 8] = std::array::from_fn(|g| {
                    let w = _mm512_and_si512(if high { _mm512_srli_epi16::<4>(v[g]) } else { v[g] }, low4);
                    if FIVE { _mm512_mask_add_epi8(w, mask(t, strips::q5k_mask_at(s, g)), w, bit4) } else { w }
                });
                let scale = _mm512_cvtepu8_epi32(v16(t, 64 + 16 * s));
                for (sumi, a) in sumi.iter_mut().zip(acts) {
                    // At most 32 · 31 · 128 per sub-block, times a scale below 64: no overflow.
                    let dot = dot_words(&w, &a.words[64 * b + 8 * s..64 * b + 8 * s + 8], C == 1);
                    *sumi = _mm512_add_epi32(*sumi, _mm512_mullo_epi32(dot, scale));
                }
            }
        }
        let (d, dmin, mins) = early.unwrap_or_else(head);
        for ((acc, sumi), a) in acc.iter_mut().zip(sumi).zip(acts) {
            let mut summ = _mm512_setzero_si512();
            for (k, mins) in mins.iter().enumerate() {
                summ = _mm512_dpwssd_epi32(summ, *mins, _mm512_set1_epi32(a.extra[4 * b + k]));
            }
            let da = _mm512_set1_ps(a.d[b]);
            let term = _mm512_sub_ps(
                _mm512_mul_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(sumi)),
                _mm512_mul_ps(_mm512_mul_ps(dmin, da), _mm512_cvtepi32_ps(summ)),
            );
            *acc = _mm512_add_ps(*acc, term);
        }
    }
    acc.map(|v| lanes(v))
}

/// Q6_K (tiles of 3360 bytes): sixteen sub-blocks of 16 with i8 scales, 6-bit values offset
/// by 32. Per block and row, as the scalar code: `sum += d_w · d_a · Σ sc·(w·a)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn strip_q6k<const C: usize>(tiles: &[[u8; 3360]], acts: [&ActRow; C]) -> [[f32; ROWS]; C] {
    let low4 = _mm512_set1_epi8(0x0F);
    let bits45 = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); C];
    for (b, t) in tiles.iter().enumerate() {
        // One thread, Q6_K 16384×7168 m=1 from memory: 15.9 → 21.9 GB/s (reading the scales
        // first as well, in ascending order as the Q4_K kernel reads its head, added nothing
        // and cost 6% in cache).
        _mm_prefetch::<_MM_HINT_T0>(t.as_ptr().wrapping_add(PREFETCH_AHEAD).cast());
        let mut sumi = [_mm512_setzero_si512(); C];
        for k in 0..8 {
            // Scales 2k and 2k + 1 of each row as a 16-bit pair, and each alone as an i32.
            let pairs = _mm512_cvtepi8_epi16(v32(t, 32 + 32 * k));
            let scales = [_mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(pairs)), _mm512_srai_epi32::<16>(pairs)];
            for (e, scale) in scales.into_iter().enumerate() {
                let s = 2 * k + e;
                // Values 16s + 4i.. of each row: nibbles from vectors 2s (i = 0, 2) and 2s + 1
                // (i = 1, 3), top bits from bits 2i of vector s. The masks keep bits 4-5,
                // which the 16-bit shifts bring from the same byte.
                let (l0, l1, h) = (v64(t, strips::q6k_low_at(2 * s)), v64(t, strips::q6k_low_at(2 * s + 1)), v64(t, strips::q6k_high_at(s)));
                let w = [
                    _mm512_or_si512(_mm512_and_si512(l0, low4), _mm512_and_si512(_mm512_slli_epi16::<4>(h), bits45)),
                    _mm512_or_si512(_mm512_and_si512(l1, low4), _mm512_and_si512(_mm512_slli_epi16::<2>(h), bits45)),
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(l0), low4), _mm512_and_si512(h, bits45)),
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(l1), low4), _mm512_and_si512(_mm512_srli_epi16::<2>(h), bits45)),
                ];
                for (sumi, a) in sumi.iter_mut().zip(acts) {
                    // Unsigned 0..63 here: at most 16 · 63 · 128 per sub-block, times |scale| ≤ 128.
                    let dot = dot_words(&w, &a.words[64 * b + 4 * s..64 * b + 4 * s + 4], C == 1);
                    *sumi = _mm512_add_epi32(*sumi, _mm512_mullo_epi32(dot, scale));
                }
            }
        }
        let d = f16x16(t, 0);
        for ((acc, sumi), a) in acc.iter_mut().zip(sumi).zip(acts) {
            // Σ sc·((w + 32)·a) − 32 · Σ sc·(Σa over the sub-block) = Σ sc·(w·a), exactly.
            let mut offset = _mm512_setzero_si512();
            for k in 0..8 {
                offset = _mm512_dpwssd_epi32(offset, _mm512_cvtepi8_epi16(v32(t, 32 + 32 * k)), _mm512_set1_epi32(a.extra[8 * b + k]));
            }
            let sumi = _mm512_sub_epi32(sumi, _mm512_slli_epi32::<5>(offset));
            let term = _mm512_mul_ps(_mm512_mul_ps(d, _mm512_set1_ps(a.d[b])), _mm512_cvtepi32_ps(sumi));
            *acc = _mm512_add_ps(*acc, term);
        }
    }
    acc.map(|v| lanes(v))
}
