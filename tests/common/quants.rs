//! Well-formed random blocks of every ggml block type a GGUF file can hold, for files at real
//! scale whose weights only need to be the right size, the right layout and a plausible spread.
//!
//! Every bit of a block is random except its scales: the f16 `d` (and `dmin` or `m`), IQ1_M's
//! f16 split over four nibbles, MXFP4's e8m0 exponent. Those are set so that the dequantized
//! values have a standard deviation near `sigma` and a mean near zero. The layouts are those of
//! the Python package `gguf` (`gguf.quants`); `tests/quants.rs` dequantizes blocks written here
//! with it and checks the spread (`tests/reference/quant_std.py`).

use super::synthetic::Rng;

/// Where a block type keeps the scales this module sets.
#[derive(Clone, Copy, Debug)]
enum Scales {
    /// Plain floats (F32, F16, BF16): each value drawn uniformly with standard deviation sigma.
    Float,
    /// An f16 scale `d` at byte `d`; with `min = Some((offset, ratio))` a second f16 at `offset`
    /// holds `ratio × d`: a negative `m` that centres `d·q + m` (Q4_1, Q5_1), or a `dmin` that
    /// `d·sc·q − dmin·m` subtracts (K-quants). `ratio` is the mean of the block's `q`.
    F16 { d: usize, min: Option<(usize, f32)> },
    /// IQ1_M: the f16 `d` in the top four bits of the four u16 scale words at byte 48.
    Iq1m,
    /// MXFP4: an e8m0 exponent in byte 0, the scale being `2^(e − 128)`.
    E8m0,
}

/// A block type: values and bytes per block, its scales, and the standard deviation of its
/// dequantized values when the scale is 1 (with `dmin`/`m` at their ratio) and every other bit
/// is random. Those unit spreads were measured with `gguf.quants.dequantize` over 2^18 values
/// (`QUANT_STD_UNIT=1 cargo test --release --test quants -- --nocapture` prints them afresh);
/// `tests/quants.rs` checks the result against sigma for every type.
#[derive(Clone, Copy, Debug)]
struct Layout {
    values: usize,
    bytes: usize,
    scales: Scales,
    unit_std: f32,
}

fn layout(ggml_type: u32) -> Option<Layout> {
    use Scales::*;
    let f16 = |d| F16 { d, min: None };
    let with_min = |d, offset, ratio| F16 { d, min: Some((offset, ratio)) };
    let unit = unit_std(ggml_type)?;
    let (values, bytes, scales) = match ggml_type {
        0 => (1, 4, Float),                   // F32
        1 => (1, 2, Float),                   // F16
        30 => (1, 2, Float),                  // BF16
        2 => (32, 18, f16(0)),                // Q4_0: d, qs[16]
        3 => (32, 20, with_min(0, 2, -7.5)),  // Q4_1: d, m, qs[16]
        6 => (32, 22, f16(0)),                // Q5_0: d, qh[4], qs[16]
        7 => (32, 24, with_min(0, 2, -15.5)), // Q5_1: d, m, qh[4], qs[16]
        8 => (32, 34, f16(0)),                // Q8_0: d, qs[32]
        10 => (256, 84, with_min(80, 82, 1.5)), // Q2_K: scales[16], qs[64], d, dmin
        11 => (256, 110, f16(108)),           // Q3_K: hmask[32], qs[64], scales[12], d
        12 => (256, 144, with_min(0, 2, 7.5)), // Q4_K: d, dmin, scales[12], qs[128]
        13 => (256, 176, with_min(0, 2, 15.5)), // Q5_K: d, dmin, scales[12], qh[32], qs[128]
        14 => (256, 210, f16(208)),           // Q6_K: ql[128], qh[64], scales[16], d
        16 => (256, 66, f16(0)),              // IQ2_XXS: d, qs[64]
        17 => (256, 74, f16(0)),              // IQ2_XS: d, qs[64], scales[8]
        18 => (256, 98, f16(0)),              // IQ3_XXS: d, qs[64], scales and signs[32]
        19 => (256, 50, f16(0)),              // IQ1_S: d, qs[32], qh[16]
        20 => (32, 18, f16(0)),               // IQ4_NL: d, qs[16]
        21 => (256, 110, f16(0)),             // IQ3_S: d, qs[64], qh[8], signs[32], scales[4]
        22 => (256, 82, f16(0)),              // IQ2_S: d, qs[32], signs[32], qh[8], scales[8]
        23 => (256, 136, f16(0)),             // IQ4_XS: d, scales_h[2], scales_l[4], qs[128]
        29 => (256, 56, Iq1m),                // IQ1_M: qs[32], qh[16], scales[8] (d inside)
        34 => (256, 54, f16(52)),             // TQ1_0: qs[48], qh[4], d
        35 => (256, 66, f16(64)),             // TQ2_0: qs[64], d
        39 => (32, 17, E8m0),                 // MXFP4: e, qs[16]
        _ => return None,
    };
    Some(Layout { values, bytes, scales, unit_std: unit })
}

/// The measured spread per unit scale (see `Layout`), or 1 while recalibrating.
fn unit_std(ggml_type: u32) -> Option<f32> {
    if std::env::var_os("QUANT_STD_UNIT").is_some() {
        return Some(1.0);
    }
    Some(match ggml_type {
        0 | 1 | 30 => 1.0,
        2 => 4.611,
        3 => 4.614,
        6 => 9.24,
        7 => 9.252,
        8 => 74.02,
        10 => 13.87,
        11 => 43.54,
        12 => 257.9,
        13 => 529.1,
        14 => 1360.0,
        16 => 53.28,
        17 => 55.76,
        18 => 142.8,
        19 => 7.17,
        20 => 67.21,
        21 => 139.8,
        22 => 56.64,
        23 => 1244.0,
        29 => 7.186,
        34 => 0.8169,
        35 => 1.12,
        39 => 5.852,
        _ => return None,
    })
}

/// Bytes per block and values per block of a type this module writes.
pub fn block_size(ggml_type: u32) -> Option<(usize, usize)> {
    layout(ggml_type).map(|l| (l.values, l.bytes))
}

/// `bytes` random bytes, eight at a time from the generator.
pub fn random_bytes(bytes: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = vec![0u8; bytes];
    fill_random(&mut out, rng);
    out
}

/// Fills `out` with random bytes, eight at a time.
pub fn fill_random(out: &mut [u8], rng: &mut Rng) {
    let mut words = out.chunks_exact_mut(8);
    for word in &mut words {
        word.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let tail = words.into_remainder();
    let last = rng.next_u64().to_le_bytes();
    let n = tail.len();
    tail.copy_from_slice(&last[..n]);
}

/// `values` values of ggml type `ggml_type` as well-formed blocks with random bits and scales
/// chosen so that the dequantized values spread with standard deviation near `sigma`.
///
/// Panics on a type it does not know or on `values` not a whole number of blocks (a test
/// helper: both are the caller's mistake).
pub fn random_blocks(ggml_type: u32, values: usize, sigma: f32, rng: &mut Rng) -> Vec<u8> {
    let mut out = vec![0u8; byte_len(ggml_type, values)];
    fill_blocks(ggml_type, &mut out, sigma, rng);
    out
}

/// The bytes `values` values of `ggml_type` take.
pub fn byte_len(ggml_type: u32, values: usize) -> usize {
    let l = layout(ggml_type).unwrap_or_else(|| panic!("no random blocks for ggml type {ggml_type}"));
    assert!(values.is_multiple_of(l.values), "{values} values are not whole blocks of {} (type {ggml_type})", l.values);
    values / l.values * l.bytes
}

/// Fills `out` (whole blocks) as [`random_blocks`] does, without allocating.
pub fn fill_blocks(ggml_type: u32, out: &mut [u8], sigma: f32, rng: &mut Rng) {
    let l = layout(ggml_type).unwrap_or_else(|| panic!("no random blocks for ggml type {ggml_type}"));
    assert!(out.len().is_multiple_of(l.bytes), "{} bytes are not whole blocks of type {ggml_type}", out.len());
    let d = sigma / l.unit_std;
    match l.scales {
        Scales::Float => {
            // Uniform in [-√3σ, √3σ): standard deviation σ.
            let width = sigma * 3f32.sqrt();
            for value in out.chunks_exact_mut(l.bytes) {
                let v = rng.uniform() * width;
                match ggml_type {
                    0 => value.copy_from_slice(&v.to_le_bytes()),
                    1 => value.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                    _ => value.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                }
            }
        }
        Scales::F16 { d: at, min } => {
            fill_random(out, rng);
            let d16 = half::f16::from_f32(d).to_le_bytes();
            let min16 = min.map(|(offset, ratio)| (offset, half::f16::from_f32(d * ratio).to_le_bytes()));
            for block in out.chunks_exact_mut(l.bytes) {
                block[at..at + 2].copy_from_slice(&d16);
                if let Some((offset, m)) = min16 {
                    block[offset..offset + 2].copy_from_slice(&m);
                }
            }
        }
        Scales::Iq1m => {
            fill_random(out, rng);
            let bits = half::f16::from_f32(d).to_bits();
            for block in out.chunks_exact_mut(l.bytes) {
                // Nibble k of d goes to the top four bits of scale word k.
                for k in 0..4 {
                    let at = 48 + 2 * k;
                    let word = u16::from_le_bytes([block[at], block[at + 1]]);
                    let word = (word & 0x0FFF) | (((bits >> (4 * k)) & 0xF) << 12);
                    block[at..at + 2].copy_from_slice(&word.to_le_bytes());
                }
            }
        }
        Scales::E8m0 => {
            fill_random(out, rng);
            // The nearest power of two: within a factor √2 of sigma.
            let e = (d.log2().round() + 128.0).clamp(2.0, 254.0) as u8;
            for block in out.chunks_exact_mut(l.bytes) {
                block[0] = e;
            }
        }
    }
}
