//! The scalar reference of the formats added for Kimi K2's files and the rest of llama.cpp's
//! CPU types: BF16, Q2_K, Q3_K, the IQ family (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
//! IQ3_S, IQ4_NL, IQ4_XS), the ternary TQ1_0/TQ2_0 and MXFP4.
//!
//! Each dot product is llama.cpp's (`ggml_vec_dot_*_q8_K` / `*_q8_0`): the same exact integer
//! sums, then f32 scaling once per block in the same order of operations. One deliberate
//! difference: IQ4_XS sums its eight sub-blocks' scaled integer sums exactly and scales the
//! block once (as llama.cpp's AVX2 kernel does) rather than adding eight f32 products (its
//! generic code), so every SIMD kernel can match it bit for bit.
//!
//! Block layouts (byte offsets within a block) are given beside each function.

use super::blocks::{half, Activations, Format};
use super::grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS, KVALUES_IQ4NL, KVALUES_MXFP4};

/// IQ1_S / IQ1_M: the shift added to every grid value, ±1/8.
pub(super) const IQ1_DELTA: f32 = 0.125;

/// An f32 rounded to the nearest brain float (ties to even, NaNs kept quiet), as llama.cpp's
/// `ggml_compute_fp32_to_bf16`, returned as the f32 it stands for.
pub(super) fn round_bf16(v: f32) -> f32 {
    let u = v.to_bits();
    let h = if u & 0x7FFF_FFFF > 0x7F80_0000 { (u >> 16) | 64 } else { u.wrapping_add(0x7FFF + ((u >> 16) & 1)) >> 16 };
    f32::from_bits(h << 16)
}

/// A brain float from its two little-endian bytes.
#[inline(always)]
fn bf16(b: &[u8]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
}

/// `±1`: minus where bit `j` of `signs` is set.
#[inline(always)]
fn sign(signs: u8, j: usize) -> i32 {
    if signs >> j & 1 != 0 {
        -1
    } else {
        1
    }
}

/// MXFP4's E8M0 scale halved (the values are stored doubled): 2^(e − 128), with the two
/// smallest exponents as subnormals, as llama.cpp's `GGML_E8M0_TO_FP32_HALF`.
#[inline(always)]
pub(super) fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { (u32::from(e) - 1) << 23 };
    f32::from_bits(bits)
}

/// IQ4_XS: the 6-bit scale of sub-block `ib` (0..8), less 32.
#[inline(always)]
pub(super) fn iq4xs_scale(b: &[u8], ib: usize) -> i32 {
    let h = u16::from_le_bytes([b[2], b[3]]);
    let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F;
    let hi = ((h >> (2 * ib)) & 3) as u8;
    i32::from(lo | (hi << 4)) - 32
}

/// Q3_K: the 16 6-bit scales of a block's 12 scale bytes, less 32.
#[inline(always)]
pub(super) fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let lo = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

/// IQ1_M: the f16 block scale spread over the top nibbles of the four 16-bit scale words.
#[inline(always)]
pub(super) fn iq1m_scale(b: &[u8]) -> f32 {
    let sc = |k: usize| u16::from_le_bytes([b[48 + 2 * k], b[49 + 2 * k]]);
    let bits = (sc(0) >> 12) | ((sc(1) >> 8) & 0x00F0) | ((sc(2) >> 4) & 0x0F00) | (sc(3) & 0xF000);
    half::f16::from_bits(bits).to_f32()
}

/// Unpacks the 256 integer weights of a block whose values are integers before one scale per
/// 16 or 32 (Q2_K: 0..3, Q3_K: -4..3, TQ1_0/TQ2_0: -1..1), in the activations' order.
#[inline(always)]
pub(super) fn unpack_ints(format: Format, b: &[u8], out: &mut [i8; 256]) {
    match format {
        // scales[16] @0, qs[64] @16, d @80, dmin @82
        Format::Q2K => {
            for half in 0..2 {
                let q = &b[16 + 32 * half..48 + 32 * half];
                for shift in 0..4 {
                    for l in 0..32 {
                        out[half * 128 + shift * 32 + l] = ((q[l] >> (2 * shift)) & 3) as i8;
                    }
                }
            }
        }
        // hmask[32] @0, qs[64] @32, scales[12] @96, d @108
        Format::Q3K => {
            for half in 0..2 {
                let q = &b[32 + 32 * half..64 + 32 * half];
                for shift in 0..4 {
                    let m = 1u8 << (4 * half + shift);
                    for l in 0..32 {
                        let low = ((q[l] >> (2 * shift)) & 3) as i8;
                        out[half * 128 + shift * 32 + l] = low - if b[l] & m != 0 { 0 } else { 4 };
                    }
                }
            }
        }
        // qs[48] @0, qh[4] @48, d @52: five base-3 digits per byte, read as ⌊3·(q·3^n mod 256)/256⌋.
        Format::TQ1_0 => {
            let trit = |q: u8, n: u32| ((u16::from(q.wrapping_mul(3u8.pow(n))) * 3) >> 8) as i8 - 1;
            for n in 0..5 {
                for m in 0..32 {
                    out[n as usize * 32 + m] = trit(b[m], n);
                }
                for m in 0..16 {
                    out[160 + n as usize * 16 + m] = trit(b[32 + m], n);
                }
            }
            for n in 0..4 {
                for j in 0..4 {
                    out[240 + n as usize * 4 + j] = trit(b[48 + j], n);
                }
            }
        }
        // qs[64] @0, d @64
        _ => {
            for half in 0..2 {
                for l in 0..4 {
                    for m in 0..32 {
                        out[half * 128 + l * 32 + m] = ((b[half * 32 + m] >> (2 * l)) & 3) as i8 - 1;
                    }
                }
            }
        }
    }
}

/// Unpacks the 256 signed grid values of an IQ2/IQ3 block (before its per-32 scales) and
/// their eight scales, the `2·s + 1` of llama.cpp, one per 16 values (IQ2_XS, IQ2_S, whose
/// scales are per 16) or repeated for both halves of each 32.
#[inline(always)]
pub(super) fn unpack_grid(format: Format, b: &[u8], out: &mut [i8; 256], scales: &mut [i32; 16]) {
    match format {
        // d @0, qs: u16[32] @2 — per 32 values, four grid bytes then a u32 of four 7-bit sign
        // codes and a 4-bit scale.
        Format::IQ2XXS => {
            for ib in 0..8 {
                let q = &b[2 + 8 * ib..10 + 8 * ib];
                let aux = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
                let ls = 2 * (aux >> 28) as i32 + 1;
                scales[2 * ib] = ls;
                scales[2 * ib + 1] = ls;
                for l in 0..4 {
                    let grid = &IQ2XXS_GRID[q[l] as usize];
                    let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                    for j in 0..8 {
                        out[32 * ib + 8 * l + j] = (i32::from(grid[j]) * sign(signs, j)) as i8;
                    }
                }
            }
        }
        // d @0, qs: u16[32] @2 (9-bit grid index, 7-bit sign code), scales[8] @66
        Format::IQ2XS => {
            for ib in 0..8 {
                scales[2 * ib] = 2 * i32::from(b[66 + ib] & 0x0F) + 1;
                scales[2 * ib + 1] = 2 * i32::from(b[66 + ib] >> 4) + 1;
                for l in 0..4 {
                    let at = 2 + 8 * ib + 2 * l;
                    let q = u16::from_le_bytes([b[at], b[at + 1]]);
                    let grid = &IQ2XS_GRID[(q & 511) as usize];
                    let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
                    for j in 0..8 {
                        out[32 * ib + 8 * l + j] = (i32::from(grid[j]) * sign(signs, j)) as i8;
                    }
                }
            }
        }
        // d @0, qs[32] @2 (grid low bytes), signs[32] @34, qh[8] @66 (grid high bits),
        // scales[8] @74
        Format::IQ2S => {
            for ib in 0..8 {
                scales[2 * ib] = 2 * i32::from(b[74 + ib] & 0x0F) + 1;
                scales[2 * ib + 1] = 2 * i32::from(b[74 + ib] >> 4) + 1;
                let qh = u16::from(b[66 + ib]);
                for l in 0..4 {
                    let index = usize::from(b[2 + 4 * ib + l]) | usize::from((qh << (8 - 2 * l)) & 0x300);
                    let grid = &IQ2S_GRID[index];
                    let signs = b[34 + 4 * ib + l];
                    for j in 0..8 {
                        out[32 * ib + 8 * l + j] = (i32::from(grid[j]) * sign(signs, j)) as i8;
                    }
                }
            }
        }
        // d @0, qs[64] @2 (grid indices), then u32[8] @66 of four 7-bit sign codes and a
        // 4-bit scale
        Format::IQ3XXS => {
            for ib in 0..8 {
                let at = 66 + 4 * ib;
                let aux = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let ls = 2 * (aux >> 28) as i32 + 1;
                scales[2 * ib] = ls;
                scales[2 * ib + 1] = ls;
                for l in 0..4 {
                    let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                    let g1 = &IQ3XXS_GRID[b[2 + 8 * ib + 2 * l] as usize];
                    let g2 = &IQ3XXS_GRID[b[3 + 8 * ib + 2 * l] as usize];
                    for j in 0..4 {
                        out[32 * ib + 8 * l + j] = (i32::from(g1[j]) * sign(signs, j)) as i8;
                        out[32 * ib + 8 * l + 4 + j] = (i32::from(g2[j]) * sign(signs, j + 4)) as i8;
                    }
                }
            }
        }
        // d @0, qs[64] @2 (grid low bytes), qh[8] @66 (ninth bits), signs[32] @74,
        // scales[4] @106
        _ => {
            for ib in 0..8 {
                let sc = b[106 + ib / 2] >> (4 * (ib % 2));
                let ls = 2 * i32::from(sc & 0x0F) + 1;
                scales[2 * ib] = ls;
                scales[2 * ib + 1] = ls;
                let qh = usize::from(b[66 + ib]);
                for l in 0..4 {
                    let i1 = usize::from(b[2 + 8 * ib + 2 * l]) | ((qh << (8 - 2 * l)) & 256);
                    let i2 = usize::from(b[3 + 8 * ib + 2 * l]) | ((qh << (7 - 2 * l)) & 256);
                    let signs = b[74 + 4 * ib + l];
                    let (g1, g2) = (&IQ3S_GRID[i1], &IQ3S_GRID[i2]);
                    for j in 0..4 {
                        out[32 * ib + 8 * l + j] = (i32::from(g1[j]) * sign(signs, j)) as i8;
                        out[32 * ib + 8 * l + 4 + j] = (i32::from(g2[j]) * sign(signs, j + 4)) as i8;
                    }
                }
            }
        }
    }
}

/// IQ1_S / IQ1_M: the 32 grid indices of a block (11 bits each).
#[inline(always)]
pub(super) fn iq1_indices(format: Format, b: &[u8]) -> [usize; 32] {
    let mut out = [0usize; 32];
    for ib in 0..8 {
        for l in 0..4 {
            out[4 * ib + l] = if format == Format::IQ1S {
                // d @0, qs[32] @2, qh: u16[8] @34
                let qh = usize::from(u16::from_le_bytes([b[34 + 2 * ib], b[35 + 2 * ib]]));
                usize::from(b[2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
            } else {
                // qs[32] @0, qh[16] @32, scales[8] @48
                let qh = usize::from(b[32 + 2 * ib + l / 2]);
                usize::from(b[4 * ib + l]) | ((qh << (8 - 4 * (l % 2))) & 0x700)
            };
        }
    }
    out
}

/// IQ1_S: the scale (`2·s + 1`) and the shift's sign of each 32 values.
#[inline(always)]
pub(super) fn iq1s_scale(b: &[u8], ib: usize) -> (i32, i32) {
    let qh = u16::from_le_bytes([b[34 + 2 * ib], b[35 + 2 * ib]]);
    (2 * i32::from((qh >> 12) & 7) + 1, if qh & 0x8000 != 0 { -1 } else { 1 })
}

/// IQ1_M: the scale (`2·s + 1`) of each 16 values (`k` in 0..16).
#[inline(always)]
pub(super) fn iq1m_sub_scale(b: &[u8], k: usize) -> i32 {
    let ib = k / 2;
    let sc = u16::from_le_bytes([b[48 + 2 * (ib / 2)], b[49 + 2 * (ib / 2)]]);
    2 * i32::from((sc >> (6 * (ib % 2) + 3 * (k % 2))) & 7) + 1
}

/// IQ1_M: the shift's sign of each 8 values (`g` in 0..32).
#[inline(always)]
pub(super) fn iq1m_delta(b: &[u8], g: usize) -> i32 {
    if b[32 + g / 2] & (0x08 << (4 * (g % 2))) != 0 {
        -1
    } else {
        1
    }
}

/// The Q8_K activations of block `i`: (values, scale, sums of each 16).
#[inline(always)]
fn q8k(act: &Activations, i: usize) -> (&[i8], f32, &[i32]) {
    (&act.qs[i * 256..i * 256 + 256], act.d[i], &act.bsums[i * 16..i * 16 + 16])
}

/// Σ w·a over equal-length slices.
#[inline(always)]
fn idot(w: &[i8], a: &[i8]) -> i32 {
    w.iter().zip(a).map(|(&w, &a)| i32::from(w) * i32::from(a)).sum()
}

/// The dot product of one row with its activations, for the formats of this module.
pub(super) fn dot(format: Format, row: &[u8], act: &Activations) -> f32 {
    let (_, size) = format.block();
    let blocks = row.chunks_exact(size).enumerate();
    let mut w = [0i8; 256];
    let mut sum = 0f32;
    match format {
        Format::BF16 => {
            // llama.cpp's `ggml_vec_dot_bf16`: exact products summed in f64.
            let s: f64 = row.chunks_exact(2).zip(&act.f32s).map(|(w, &a)| f64::from(bf16(w) * a)).sum();
            return s as f32;
        }
        Format::Q2K => {
            for (i, b) in blocks {
                let (a, ad, bsums) = q8k(act, i);
                unpack_ints(format, b, &mut w);
                let summs: i32 = (0..16).map(|j| bsums[j] * i32::from(b[j] >> 4)).sum();
                let isum: i32 = (0..16).map(|j| i32::from(b[j] & 0x0F) * idot(&w[16 * j..16 * j + 16], &a[16 * j..16 * j + 16])).sum();
                let dall = ad * half(b, 80);
                let dmin = ad * half(b, 82);
                sum += dall * isum as f32 - dmin * summs as f32;
            }
        }
        Format::Q3K => {
            for (i, b) in blocks {
                let (a, ad, _) = q8k(act, i);
                unpack_ints(format, b, &mut w);
                let scales = q3k_scales(&b[96..108]);
                let isum: i32 = (0..16).map(|j| i32::from(scales[j]) * idot(&w[16 * j..16 * j + 16], &a[16 * j..16 * j + 16])).sum();
                sum += half(b, 108) * ad * isum as f32;
            }
        }
        Format::TQ1_0 | Format::TQ2_0 => {
            let d_at = if format == Format::TQ1_0 { 52 } else { 64 };
            for (i, b) in blocks {
                let (a, ad, _) = q8k(act, i);
                unpack_ints(format, b, &mut w);
                sum += idot(&w, a) as f32 * (half(b, d_at) * ad);
            }
        }
        Format::IQ2XXS | Format::IQ2XS | Format::IQ2S | Format::IQ3XXS | Format::IQ3S => {
            let mut scales = [0i32; 16];
            for (i, b) in blocks {
                let (a, ad, _) = q8k(act, i);
                unpack_grid(format, b, &mut w, &mut scales);
                let bsum: i32 = (0..16).map(|k| scales[k] * idot(&w[16 * k..16 * k + 16], &a[16 * k..16 * k + 16])).sum();
                sum += half(b, 0) * ad * bsum as f32;
            }
            // The grids hold 8× (IQ2) or 4× (IQ3_XXS) the values; IQ3_S's scale absorbs it.
            return match format {
                Format::IQ3S => sum,
                Format::IQ3XXS => 0.25 * sum,
                _ => 0.125 * sum,
            };
        }
        Format::IQ1S | Format::IQ1M => {
            for (i, b) in blocks {
                let (a, ad, bsums) = q8k(act, i);
                let indices = iq1_indices(format, b);
                let (mut sumi, mut sumi1) = (0i32, 0i32);
                for (k, &bsum) in bsums.iter().enumerate() {
                    let mut lsum = 0;
                    let mut shift = 0;
                    for l in 0..2 {
                        let g = 2 * k + l;
                        let a8 = &a[8 * g..8 * g + 8];
                        lsum += IQ1S_GRID[indices[g]].iter().zip(a8).map(|(&w, &a)| i32::from(w) * i32::from(a)).sum::<i32>();
                        if format == Format::IQ1M {
                            shift += iq1m_delta(b, g) * a8.iter().map(|&a| i32::from(a)).sum::<i32>();
                        }
                    }
                    let ls = if format == Format::IQ1S { iq1s_scale(b, k / 2).0 } else { iq1m_sub_scale(b, k) };
                    if format == Format::IQ1S {
                        shift = iq1s_scale(b, k / 2).1 * bsum;
                    }
                    sumi += ls * lsum;
                    sumi1 += ls * shift;
                }
                let d = if format == Format::IQ1S { half(b, 0) } else { iq1m_scale(b) };
                sum += d * ad * (sumi as f32 + IQ1_DELTA * sumi1 as f32);
            }
        }
        Format::IQ4XS => {
            for (i, b) in blocks {
                let (a, ad, _) = q8k(act, i);
                let mut bsum = 0i32;
                for ib in 0..8 {
                    let q = &b[8 + 16 * ib..24 + 16 * ib];
                    let a32 = &a[32 * ib..32 * ib + 32];
                    let s: i32 = (0..16)
                        .map(|j| i32::from(a32[j]) * i32::from(KVALUES_IQ4NL[usize::from(q[j] & 0x0F)]) + i32::from(a32[j + 16]) * i32::from(KVALUES_IQ4NL[usize::from(q[j] >> 4)]))
                        .sum();
                    bsum += iq4xs_scale(b, ib) * s;
                }
                sum += half(b, 0) * ad * bsum as f32;
            }
        }
        Format::IQ4NL | Format::MXFP4 => {
            let (values, q_at) = if format == Format::IQ4NL { (&KVALUES_IQ4NL, 2) } else { (&KVALUES_MXFP4, 1) };
            for (i, b) in blocks {
                let a = &act.qs[32 * i..32 * i + 32];
                let q = &b[q_at..q_at + 16];
                let s: i32 = (0..16)
                    .map(|j| i32::from(a[j]) * i32::from(values[usize::from(q[j] & 0x0F)]) + i32::from(a[j + 16]) * i32::from(values[usize::from(q[j] >> 4)]))
                    .sum();
                let d = if format == Format::IQ4NL { act.d[i] * half(b, 0) } else { act.d[i] * e8m0_half(b[0]) };
                sum += d * s as f32;
            }
        }
        _ => {}
    }
    sum
}

/// Dequantizes one row of a format of this module into `out`, with llama.cpp's arithmetic
/// (`dequantize_row_*`).
pub(super) fn dequantize(format: Format, row: &[u8], out: &mut [f32]) {
    let (per_block, size) = format.block();
    let blocks = row.chunks_exact(size).zip(out.chunks_exact_mut(per_block));
    let mut w = [0i8; 256];
    match format {
        Format::BF16 => {
            for (b, o) in blocks {
                o[0] = bf16(b);
            }
        }
        Format::Q2K => {
            for (b, o) in blocks {
                unpack_ints(format, b, &mut w);
                let (d, dmin) = (half(b, 80), half(b, 82));
                for (k, o) in o.iter_mut().enumerate() {
                    let sc = b[k / 16];
                    *o = d * f32::from(sc & 0x0F) * f32::from(w[k]) - dmin * f32::from(sc >> 4);
                }
            }
        }
        Format::Q3K => {
            for (b, o) in blocks {
                unpack_ints(format, b, &mut w);
                let scales = q3k_scales(&b[96..108]);
                let d = half(b, 108);
                for (k, o) in o.iter_mut().enumerate() {
                    *o = d * f32::from(scales[k / 16]) * f32::from(w[k]);
                }
            }
        }
        Format::TQ1_0 | Format::TQ2_0 => {
            let d_at = if format == Format::TQ1_0 { 52 } else { 64 };
            for (b, o) in blocks {
                unpack_ints(format, b, &mut w);
                let d = half(b, d_at);
                for (o, &q) in o.iter_mut().zip(&w) {
                    *o = f32::from(q) * d;
                }
            }
        }
        Format::IQ2XXS | Format::IQ2XS | Format::IQ2S | Format::IQ3XXS | Format::IQ3S => {
            let mut scales = [0i32; 16];
            for (b, o) in blocks {
                unpack_grid(format, b, &mut w, &mut scales);
                let d = half(b, 0);
                for (k, o) in o.iter_mut().enumerate() {
                    // llama.cpp: d·(0.5 + s)·0.25 (IQ2), ·0.5 (IQ3_XXS), d·(1 + 2s) (IQ3_S); the
                    // grid value carries the sign.
                    let s = ((scales[k / 16] - 1) / 2) as f32;
                    let db = match format {
                        Format::IQ3S => d * scales[k / 16] as f32,
                        Format::IQ3XXS => d * (0.5 + s) * 0.5,
                        _ => d * (0.5 + s) * 0.25,
                    };
                    let g = f32::from(w[k].unsigned_abs());
                    *o = if w[k] < 0 { -(db * g) } else { db * g };
                }
            }
        }
        Format::IQ1S | Format::IQ1M => {
            for (b, o) in blocks {
                let indices = iq1_indices(format, b);
                let d = if format == Format::IQ1S { half(b, 0) } else { iq1m_scale(b) };
                for (g, o) in o.chunks_exact_mut(8).enumerate() {
                    let (ls, delta) = if format == Format::IQ1S { iq1s_scale(b, g / 4) } else { (iq1m_sub_scale(b, g / 2), iq1m_delta(b, g)) };
                    let dl = d * ls as f32;
                    let delta = if delta < 0 { -IQ1_DELTA } else { IQ1_DELTA };
                    for (o, &v) in o.iter_mut().zip(&IQ1S_GRID[indices[g]]) {
                        *o = dl * (f32::from(v) + delta);
                    }
                }
            }
        }
        Format::IQ4XS => {
            for (b, o) in blocks {
                let d = half(b, 0);
                for (ib, o) in o.chunks_exact_mut(32).enumerate() {
                    let dl = d * iq4xs_scale(b, ib) as f32;
                    for j in 0..16 {
                        let q = b[8 + 16 * ib + j];
                        o[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0F)]);
                        o[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
                    }
                }
            }
        }
        Format::IQ4NL | Format::MXFP4 => {
            for (b, o) in blocks {
                let (values, d, q) = if format == Format::IQ4NL { (&KVALUES_IQ4NL, half(b, 0), &b[2..18]) } else { (&KVALUES_MXFP4, e8m0_half(b[0]), &b[1..17]) };
                for j in 0..16 {
                    o[j] = f32::from(values[usize::from(q[j] & 0x0F)]) * d;
                    o[j + 16] = f32::from(values[usize::from(q[j] >> 4)]) * d;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brain-float rounding is to nearest, ties to even, NaNs kept NaN, as llama.cpp's.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn bf16_rounds_to_nearest_even() {
        let ulp = 2f32.powi(-7);
        assert_eq!(round_bf16(1.0 + ulp / 2.0), 1.0);
        assert_eq!(round_bf16(1.0 + ulp * 1.5), 1.0 + 2.0 * ulp);
        assert_eq!(round_bf16(1.0 + ulp * 0.75), 1.0 + ulp);
        assert_eq!(round_bf16(-3.0), -3.0);
        assert!(round_bf16(f32::NAN).is_nan());
        assert!(round_bf16(f32::from_bits(0x7F80_0001)).is_nan());
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    }

    /// MXFP4's halved E8M0 scale: 2^(e − 128), subnormal for e < 2.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn e8m0_scales_are_halved_powers_of_two() {
        assert_eq!(e8m0_half(127), 0.5);
        assert_eq!(e8m0_half(128), 1.0);
        assert_eq!(e8m0_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_half(254), 2f32.powi(126));
    }

    /// The sign bytes: the seven coded signs, and an eighth that makes the count even.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn ksigns_have_even_parity() {
        for (code, &signs) in KSIGNS_IQ2XS.iter().enumerate() {
            assert_eq!(usize::from(signs & 127), code);
            assert_eq!(signs.count_ones() % 2, 0, "code {code}");
        }
    }
}
