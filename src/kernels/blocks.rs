//! GGUF block formats: dequantization, quantizing activations, and block dot products.
//!
//! The arithmetic is llama.cpp's: activations are quantized to 8 bits per block (Q8_0 for
//! Q4_0/Q5_0/Q8_0/IQ4_NL/MXFP4 weights, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants, the IQ
//! formats but IQ4_NL, and TQ1_0/TQ2_0; BF16 weights meet activations rounded to BF16) with
//! the same scales and rounding, and each block's dot product is an exact integer sum scaled in
//! f32. Two engines doing this agree to float rounding, so greedy decoding picks the same
//! tokens. The formats after the first ten have their scalar code in `lowbit` and their lookup
//! grids, generated from the Python `gguf` package, in `grids`.
//!
//! The code here is portable scalar code. On x86_64, [`dot`] and [`Activations::quantize`]
//! switch at run time to SIMD versions (AVX2), and on WebAssembly built with simd128 to SIMD
//! versions chosen at compile time, that give bit-identical results; [`dot_scalar`] and
//! [`Activations::quantize_scalar`] remain the reference.

use half::f16;

/// A block format this module computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// 32 values: f16 scale, 4-bit values offset by 8.
    Q4_0,
    /// 32 values: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// 32 values: f16 scale, 5-bit values offset by 16.
    Q5_0,
    /// 32 values: f16 scale and minimum, 5-bit values.
    Q5_1,
    /// 32 values: f16 scale, 8-bit values.
    Q8_0,
    /// 256 values: 8 sub-blocks with 6-bit scales and minimums, 4-bit values.
    Q4K,
    /// 256 values: as Q4_K with a fifth bit.
    Q5K,
    /// 256 values: 16 sub-blocks with 8-bit scales, 6-bit values offset by 32.
    Q6K,
    /// Brain floats: the top 16 bits of an f32.
    BF16,
    /// 256 values: 16 sub-blocks with 4-bit scales and minimums, 2-bit values.
    Q2K,
    /// 256 values: 16 sub-blocks with 6-bit scales, 3-bit values offset by 4.
    Q3K,
    /// 256 values: 8-value groups from a 256-entry grid with sign codes, 4-bit scales.
    IQ2XXS,
    /// 256 values: 8-value groups from a 512-entry grid with sign codes, 4-bit scales.
    IQ2XS,
    /// 256 values: 4-value groups from a 256-entry grid with sign codes, 4-bit scales.
    IQ3XXS,
    /// 256 values: ternary 8-value groups from a 2048-entry grid, 3-bit scales and a shift.
    IQ1S,
    /// 32 values: f16 scale, 4-bit indices into 16 non-linear values.
    IQ4NL,
    /// 256 values: 4-value groups from a 512-entry grid with sign bits, 4-bit scales.
    IQ3S,
    /// 256 values: 8-value groups from a 1024-entry grid with sign bits, 4-bit scales.
    IQ2S,
    /// 256 values: IQ4_NL's values with 6-bit scales per 32.
    IQ4XS,
    /// 256 values: as IQ1_S with the shift per 8 values and the scale spread over the scales.
    IQ1M,
    /// 256 values: ternary, five values per byte (base 3).
    TQ1_0,
    /// 256 values: ternary, 2 bits each.
    TQ2_0,
    /// 32 values: a power-of-two scale (E8M0), 4-bit E2M1 values.
    MXFP4,
}

/// How activations are quantized to meet a weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    /// Plain floats (for float weights).
    F32,
    /// 32-value blocks, f16 scale.
    Q8_0,
    /// 32-value blocks, f16 scale and f16 scaled sum.
    Q8_1,
    /// 256-value blocks, f32 scale and sums of each 16 values.
    Q8K,
    /// Brain floats (for BF16 weights, as llama.cpp converts their activations), kept in
    /// [`Activations::f32s`] as the f32s they stand for.
    BF16,
}

impl Format {
    /// The format of a ggml type id, if this module computes with it.
    pub fn from_ggml(id: u32) -> Option<Format> {
        Some(match id {
            0 => Format::F32,
            1 => Format::F16,
            2 => Format::Q4_0,
            3 => Format::Q4_1,
            6 => Format::Q5_0,
            7 => Format::Q5_1,
            8 => Format::Q8_0,
            12 => Format::Q4K,
            13 => Format::Q5K,
            14 => Format::Q6K,
            30 => Format::BF16,
            10 => Format::Q2K,
            11 => Format::Q3K,
            16 => Format::IQ2XXS,
            17 => Format::IQ2XS,
            18 => Format::IQ3XXS,
            19 => Format::IQ1S,
            20 => Format::IQ4NL,
            21 => Format::IQ3S,
            22 => Format::IQ2S,
            23 => Format::IQ4XS,
            29 => Format::IQ1M,
            34 => Format::TQ1_0,
            35 => Format::TQ2_0,
            39 => Format::MXFP4,
            _ => return None,
        })
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            Format::F32 => (1, 4),
            Format::F16 => (1, 2),
            Format::Q4_0 => (32, 18),
            Format::Q4_1 => (32, 20),
            Format::Q5_0 => (32, 22),
            Format::Q5_1 => (32, 24),
            Format::Q8_0 => (32, 34),
            Format::Q4K => (256, 144),
            Format::Q5K => (256, 176),
            Format::Q6K => (256, 210),
            Format::BF16 => (1, 2),
            Format::Q2K => (256, 84),
            Format::Q3K => (256, 110),
            Format::IQ2XXS => (256, 66),
            Format::IQ2XS => (256, 74),
            Format::IQ3XXS => (256, 98),
            Format::IQ1S => (256, 50),
            Format::IQ4NL => (32, 18),
            Format::IQ3S => (256, 110),
            Format::IQ2S => (256, 82),
            Format::IQ4XS => (256, 136),
            Format::IQ1M => (256, 56),
            Format::TQ1_0 => (256, 54),
            Format::TQ2_0 => (256, 66),
            Format::MXFP4 => (32, 17),
        }
    }

    /// The byte offsets, within a block, of its f16 scale (and f16 minimum, where it has one):
    /// none for the float formats and for the formats whose scale is not one f16 (MXFP4's E8M0
    /// exponent, IQ1_M's f16 spread over the top nibbles of its scale words).
    pub fn f16_scale_offsets(self) -> &'static [usize] {
        match self {
            Format::F32 | Format::F16 | Format::BF16 | Format::MXFP4 | Format::IQ1M => &[],
            Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K => &[0, 2],
            Format::Q6K => &[208],
            Format::Q2K => &[80, 82],
            Format::Q3K => &[108],
            Format::TQ1_0 => &[52],
            Format::TQ2_0 => &[64],
            _ => &[0],
        }
    }

    /// The activation format its dot product takes: llama.cpp's `vec_dot_type` (except F16,
    /// whose activations stay f32 here).
    pub fn act(self) -> ActFormat {
        match self {
            Format::F32 | Format::F16 => ActFormat::F32,
            Format::BF16 => ActFormat::BF16,
            Format::Q4_0 | Format::Q5_0 | Format::Q8_0 | Format::IQ4NL | Format::MXFP4 => ActFormat::Q8_0,
            Format::Q4_1 | Format::Q5_1 => ActFormat::Q8_1,
            Format::Q4K
            | Format::Q5K
            | Format::Q6K
            | Format::Q2K
            | Format::Q3K
            | Format::IQ2XXS
            | Format::IQ2XS
            | Format::IQ3XXS
            | Format::IQ1S
            | Format::IQ3S
            | Format::IQ2S
            | Format::IQ4XS
            | Format::IQ1M
            | Format::TQ1_0
            | Format::TQ2_0 => ActFormat::Q8K,
        }
    }
}

pub(super) fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// One quantized activation row.
#[derive(Debug, Clone, Default)]
pub struct Activations {
    /// The values, for float weights.
    pub f32s: Vec<f32>,
    /// 8-bit values.
    pub qs: Vec<i8>,
    /// The values of `qs` widened to 16 bits, for SIMD kernels whose cheapest exact product
    /// is 16-bit (WebAssembly's): its quantizer fills them once per row rather than each
    /// kernel once per weight row. Empty where no kernel wants them; kernels that read them
    /// check that there are as many as `qs`.
    pub qs16: Vec<i16>,
    /// Scale of each block.
    pub d: Vec<f32>,
    /// Q8_1: the f16-rounded `d · Σq` of each block. Q8_0: `Σq` of each block.
    pub s: Vec<f32>,
    /// Q8_K: the sum of each 16 values.
    pub bsums: Vec<i32>,
    /// `qs` in the order the AVX-512 IQ4_XS kernel multiplies it, filled for that format's
    /// products ([`QMatrix::matmul`](super::QMatrix::matmul)) so that it is reordered once per
    /// row rather than once per weight row: in each 128 values (four 32-value runs) the first
    /// 16 of each run, then the last 16 of each. Empty elsewhere; a quantizer empties it.
    pub runs_split: Vec<i8>,
}

impl Activations {
    /// Quantizes `x` (a multiple of the format's block length) into `self`, reusing its buffers.
    ///
    /// On x86_64 CPUs with AVX2, FMA and F16C this runs a SIMD quantizer, chosen at run time,
    /// and on WebAssembly with simd128 one chosen at compile time (which also fills
    /// [`Activations::qs16`]); both give bit-identical results to
    /// [`Activations::quantize_scalar`].
    pub fn quantize(&mut self, x: &[f32], format: ActFormat) {
        #[cfg(target_arch = "x86_64")]
        if super::x86::quantize(self, x, format) {
            return;
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if super::wasm::quantize(self, x, format) {
            return;
        }
        self.quantize_scalar(x, format);
    }

    /// Empties every field (keeping their memory), as each quantizer does first.
    pub(crate) fn clear(&mut self) {
        self.f32s.clear();
        self.qs.clear();
        self.qs16.clear();
        self.runs_split.clear();
        self.d.clear();
        self.s.clear();
        self.bsums.clear();
    }

    /// [`Activations::quantize`] in portable scalar code: the reference the SIMD quantizer
    /// must match bit for bit, and the path on every target without it. It leaves
    /// [`Activations::qs16`] empty.
    pub fn quantize_scalar(&mut self, x: &[f32], format: ActFormat) {
        self.clear();
        match format {
            ActFormat::F32 => self.f32s.extend_from_slice(x),
            ActFormat::BF16 => self.f32s.extend(x.iter().map(|&v| super::lowbit::round_bf16(v))),
            ActFormat::Q8_0 | ActFormat::Q8_1 => {
                for block in x.chunks_exact(32) {
                    // llama.cpp's x86 quantizer: scale 127/amax, round half to even.
                    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                    let mut sum = 0i32;
                    for &v in block {
                        let q = (v * id).round_ties_even() as i32;
                        // Wrapping: a block so small (subnormal) that `id` overflows saturates
                        // q to i32::MAX, which must not panic debug builds. Its scale rounds to
                        // zero, so the sum never matters then.
                        sum = sum.wrapping_add(q);
                        self.qs.push(q as i8);
                    }
                    self.d.push(f16::from_f32(d).to_f32());
                    self.s.push(match format {
                        ActFormat::Q8_1 => f16::from_f32(d * sum as f32).to_f32(),
                        _ => sum as f32,
                    });
                }
            }
            ActFormat::Q8K => {
                for block in x.chunks_exact(256) {
                    // The value of largest magnitude (the first of equals) sets the scale.
                    let mut max = 0f32;
                    let mut amax = 0f32;
                    for &v in block {
                        if v.abs() > amax {
                            amax = v.abs();
                            max = v;
                        }
                    }
                    if amax == 0.0 {
                        self.qs.extend(std::iter::repeat_n(0i8, 256));
                        self.bsums.extend(std::iter::repeat_n(0, 16));
                        self.d.push(0.0);
                        continue;
                    }
                    let iscale = -127.0 / max;
                    let start = self.qs.len();
                    for &v in block {
                        self.qs.push(((iscale * v).round_ties_even() as i32).min(127) as i8);
                    }
                    for sixteen in self.qs[start..].chunks_exact(16) {
                        self.bsums.push(sixteen.iter().map(|&q| q as i32).sum());
                    }
                    self.d.push(1.0 / iscale);
                }
            }
        }
    }
}

/// Σ a·b over 32 signed bytes.
#[inline(always)]
fn dot32(a: &[i8; 32], b: &[i8]) -> i32 {
    let mut sum = 0i32;
    for j in 0..32 {
        sum += a[j] as i32 * b[j] as i32;
    }
    sum
}

/// The dot product of one weight row (`row`: its bytes) with quantized activations.
///
/// On x86_64 CPUs with AVX2, FMA and F16C this runs SIMD kernels, chosen at run time, and on
/// WebAssembly with simd128 ones chosen at compile time (for activations from
/// [`Activations::quantize`]); both give bit-identical results to [`dot_scalar`]. Elsewhere
/// (other CPUs, WebAssembly without simd128) it is [`dot_scalar`].
#[inline]
pub fn dot(format: Format, row: &[u8], act: &Activations) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(sum) = super::x86::dot(format, row, act) {
        return sum;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if let Some(sum) = super::wasm::dot(format, row, act) {
        return sum;
    }
    dot_scalar(format, row, act)
}

/// [`dot`] in portable scalar code: the reference the SIMD kernels must match bit for bit,
/// and the path on every target without them.
pub fn dot_scalar(format: Format, row: &[u8], act: &Activations) -> f32 {
    match format {
        Format::F32 => row.chunks_exact(4).zip(&act.f32s).map(|(w, a)| f32::from_le_bytes([w[0], w[1], w[2], w[3]]) * a).sum(),
        Format::F16 => row.chunks_exact(2).zip(&act.f32s).map(|(w, a)| half(w, 0) * a).sum(),
        Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 | Format::Q8_0 => dot_32(format, row, act),
        Format::Q4K | Format::Q5K => dot_q45k(format, row, act),
        Format::Q6K => dot_q6k(row, act),
        _ => super::lowbit::dot(format, row, act),
    }
}

/// Unpacks one 32-value block into signed bytes (offsets applied for Q4_0/Q5_0).
#[inline(always)]
fn unpack_32(format: Format, b: &[u8], out: &mut [i8; 32]) {
    match format {
        Format::Q4_0 | Format::Q4_1 => {
            let (qs, offset) = if format == Format::Q4_0 { (&b[2..18], 8) } else { (&b[4..20], 0) };
            for j in 0..16 {
                out[j] = (qs[j] & 0x0F) as i8 - offset;
                out[j + 16] = (qs[j] >> 4) as i8 - offset;
            }
        }
        Format::Q5_0 | Format::Q5_1 => {
            let (h, qs, offset) = if format == Format::Q5_0 { (2, &b[6..22], 16) } else { (4, &b[8..24], 0) };
            let qh = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]);
            for j in 0..16 {
                let hi0 = (((qh >> j) << 4) & 0x10) as u8;
                let hi1 = ((qh >> (j + 12)) & 0x10) as u8;
                out[j] = ((qs[j] & 0x0F) | hi0) as i8 - offset;
                out[j + 16] = ((qs[j] >> 4) | hi1) as i8 - offset;
            }
        }
        _ => {
            for j in 0..32 {
                out[j] = b[2 + j] as i8;
            }
        }
    }
}

fn dot_32(format: Format, row: &[u8], act: &Activations) -> f32 {
    let (_, size) = format.block();
    let mut w = [0i8; 32];
    let mut sum = 0f32;
    for (i, b) in row.chunks_exact(size).enumerate() {
        unpack_32(format, b, &mut w);
        let sumi = dot32(&w, &act.qs[i * 32..i * 32 + 32]);
        let d = half(b, 0) * act.d[i];
        sum += match format {
            // With a minimum: m · (d_a · Σa), the activation's f16-rounded scaled sum.
            Format::Q4_1 | Format::Q5_1 => sumi as f32 * d + half(b, 2) * act.s[i],
            _ => sumi as f32 * d,
        };
    }
    sum
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K block's 12 scale bytes.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (i32, i32) {
    if j < 4 {
        ((q[j] & 63) as i32, (q[j + 4] & 63) as i32)
    } else {
        (((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4)) as i32, ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as i32)
    }
}

/// Unpacks a Q4_K/Q5_K block's 256 values (0..15 or 0..31).
#[inline(always)]
fn unpack_q45k(format: Format, b: &[u8], out: &mut [i8; 256]) {
    let (qh, qs) = if format == Format::Q5K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        for l in 0..32 {
            let (mut lo, mut hi) = ((q[l] & 0x0F) as i8, (q[l] >> 4) as i8);
            if let Some(qh) = qh {
                lo += (((qh[l] >> (2 * chunk)) & 1) << 4) as i8;
                hi += (((qh[l] >> (2 * chunk + 1)) & 1) << 4) as i8;
            }
            out[chunk * 64 + l] = lo;
            out[chunk * 64 + 32 + l] = hi;
        }
    }
}

fn dot_q45k(format: Format, row: &[u8], act: &Activations) -> f32 {
    let (_, size) = format.block();
    let mut w = [0i8; 256];
    let mut sum = 0f32;
    for (i, b) in row.chunks_exact(size).enumerate() {
        unpack_q45k(format, b, &mut w);
        let a = &act.qs[i * 256..i * 256 + 256];
        let scales = &b[4..16];
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let wj: &[i8; 32] = w[j * 32..j * 32 + 32].try_into().unwrap_or(&[0; 32]);
            sumi += sc * dot32(wj, &a[j * 32..j * 32 + 32]);
            summ += m * (act.bsums[i * 16 + 2 * j] + act.bsums[i * 16 + 2 * j + 1]);
        }
        let d = half(b, 0) * act.d[i];
        let dmin = half(b, 2) * act.d[i];
        sum += d * sumi as f32 - dmin * summ as f32;
    }
    sum
}

/// Unpacks a Q6_K block's 256 values (-32..31).
#[inline(always)]
fn unpack_q6k(b: &[u8], out: &mut [i8; 256]) {
    for half_block in 0..2 {
        let ql = &b[half_block * 64..half_block * 64 + 64];
        let qh = &b[128 + half_block * 32..128 + half_block * 32 + 32];
        let o = &mut out[half_block * 128..half_block * 128 + 128];
        for l in 0..32 {
            o[l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            o[l + 32] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
}

fn dot_q6k(row: &[u8], act: &Activations) -> f32 {
    let mut w = [0i8; 256];
    let mut sum = 0f32;
    for (i, b) in row.chunks_exact(210).enumerate() {
        unpack_q6k(b, &mut w);
        let a = &act.qs[i * 256..i * 256 + 256];
        let mut sumi = 0i32;
        for j in 0..16 {
            let scale = b[192 + j] as i8 as i32;
            let mut s = 0i32;
            for l in 0..16 {
                s += w[j * 16 + l] as i32 * a[j * 16 + l] as i32;
            }
            sumi += scale * s;
        }
        sum += half(b, 208) * act.d[i] * sumi as f32;
    }
    sum
}

/// Dequantizes one row (`row`: its bytes) into `out`.
pub fn dequantize(format: Format, row: &[u8], out: &mut [f32]) {
    match format {
        Format::F32 => {
            for (o, w) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            }
        }
        Format::F16 => {
            for (o, w) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = half(w, 0);
            }
        }
        Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 | Format::Q8_0 => {
            let mut w = [0i8; 32];
            for (b, o) in row.chunks_exact(format.block().1).zip(out.chunks_exact_mut(32)) {
                unpack_32(format, b, &mut w);
                let d = half(b, 0);
                let m = if matches!(format, Format::Q4_1 | Format::Q5_1) { half(b, 2) } else { 0.0 };
                for (o, &q) in o.iter_mut().zip(&w) {
                    *o = q as f32 * d + m;
                }
            }
        }
        Format::Q4K | Format::Q5K => {
            let mut w = [0i8; 256];
            for (b, o) in row.chunks_exact(format.block().1).zip(out.chunks_exact_mut(256)) {
                unpack_q45k(format, b, &mut w);
                let (d, dmin) = (half(b, 0), half(b, 2));
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &b[4..16]);
                    for l in 0..32 {
                        o[j * 32 + l] = d * sc as f32 * w[j * 32 + l] as f32 - dmin * m as f32;
                    }
                }
            }
        }
        Format::Q6K => {
            let mut w = [0i8; 256];
            for (b, o) in row.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
                unpack_q6k(b, &mut w);
                let d = half(b, 208);
                for (k, o) in o.iter_mut().enumerate() {
                    *o = d * (b[192 + k / 16] as i8) as f32 * w[k] as f32;
                }
            }
        }
        _ => super::lowbit::dequantize(format, row, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// Every format.
    const ALL: [Format; 25] = [
        Format::F32,
        Format::F16,
        Format::Q4_0,
        Format::Q4_1,
        Format::Q5_0,
        Format::Q5_1,
        Format::Q8_0,
        Format::Q4K,
        Format::Q5K,
        Format::Q6K,
        Format::BF16,
        Format::Q2K,
        Format::Q3K,
        Format::IQ2XXS,
        Format::IQ2XS,
        Format::IQ3XXS,
        Format::IQ1S,
        Format::IQ4NL,
        Format::IQ3S,
        Format::IQ2S,
        Format::IQ4XS,
        Format::IQ1M,
        Format::TQ1_0,
        Format::TQ2_0,
        Format::MXFP4,
    ];

    /// Writes the finite f16 `scale` into block `b` of `format`, wherever it keeps its scales.
    fn set_scale(format: Format, b: &mut [u8], scale: f16) {
        for &at in format.f16_scale_offsets() {
            b[at..at + 2].copy_from_slice(&scale.to_le_bytes());
        }
        if format == Format::IQ1M {
            // Its f16 scale is spread over the top nibbles of the four 16-bit scale words.
            let bits = scale.to_bits();
            for k in 0..4 {
                b[49 + 2 * k] = (b[49 + 2 * k] & 0x0F) | ((((bits >> (4 * k)) & 0x0F) as u8) << 4);
            }
        }
    }

    /// Random but well-formed blocks: finite f16 scales, any bits elsewhere.
    fn random_row(format: Format, blocks: usize, rng: &mut Rng) -> Vec<u8> {
        let (_, size) = format.block();
        let mut row: Vec<u8> = (0..blocks * size).map(|_| rng.next() as u8).collect();
        for b in row.chunks_exact_mut(size) {
            for &at in format.f16_scale_offsets() {
                b[at..at + 2].copy_from_slice(&f16::from_f32(rng.f() * 0.1).to_le_bytes());
            }
            if format == Format::IQ1M {
                set_scale(format, b, f16::from_f32(rng.f() * 0.1));
            }
            if format == Format::F32 {
                b.copy_from_slice(&rng.f().to_le_bytes());
            }
            if format == Format::F16 {
                b.copy_from_slice(&f16::from_f32(rng.f()).to_le_bytes());
            }
            if format == Format::BF16 {
                b.copy_from_slice(&((rng.f().to_bits() >> 16) as u16).to_le_bytes());
            }
        }
        row
    }

    /// The dot product equals the plain sum over dequantized weights and dequantized
    /// activations, for every format, including a single block and odd block counts.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn dot_matches_dequantized_reference() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for format in ALL {
            let (per_block, _) = format.block();
            let unit = if per_block == 1 { 32 } else { per_block };
            for units in [1, 3, 7] {
                let n = unit * units;
                let row = random_row(format, n / per_block, &mut rng);
                let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                let mut act = Activations::default();
                act.quantize(&x, format.act());
                // The activations as the kernel sees them.
                let xa: Vec<f32> = match format.act() {
                    ActFormat::F32 => x.clone(),
                    ActFormat::BF16 => act.f32s.clone(),
                    ActFormat::Q8K => act.qs.iter().enumerate().map(|(i, &q)| q as f32 * act.d[i / 256]).collect(),
                    _ => act.qs.iter().enumerate().map(|(i, &q)| q as f32 * act.d[i / 32]).collect(),
                };
                let mut w = vec![0f32; n];
                dequantize(format, &row, &mut w);
                let mut want: f64 = w.iter().zip(&xa).map(|(a, b)| *a as f64 * *b as f64).sum();
                if matches!(format, Format::Q4_1 | Format::Q5_1) {
                    // The minimum meets the f16-rounded `d·Σq` of the activations, as in llama.cpp.
                    let size = format.block().1;
                    for i in 0..n / 32 {
                        let m = half(&row[i * size..], 2) as f64;
                        let sum_q: f64 = act.qs[i * 32..i * 32 + 32].iter().map(|&q| q as f64).sum();
                        want += m * (act.s[i] as f64 - act.d[i] as f64 * sum_q);
                    }
                }
                let got = dot(format, &row, &act) as f64;
                let scale: f64 = w.iter().zip(&xa).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>().max(1e-3);
                assert!((got - want).abs() / scale < 1e-5, "{format:?} x{units}: {got} vs {want}");
            }
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn activation_quantizers_follow_llama_cpp() {
        let x: Vec<f32> = (0..256).map(|i| (i as f32 - 100.0) / 37.0).collect();
        let mut a = Activations::default();
        a.quantize(&x, ActFormat::Q8_0);
        assert_eq!(a.qs.len(), 256);
        assert_eq!(a.qs[0], -127);
        a.quantize(&x, ActFormat::Q8K);
        // The largest magnitude is the last value (155/37); it maps to -127·(155/37)/(155/37).
        assert_eq!(a.qs[255], -127);
        assert!(a.d[0] < 0.0);
        assert_eq!(a.bsums.len(), 16);
        assert_eq!(a.bsums[0], a.qs[..16].iter().map(|&q| q as i32).sum::<i32>());
        a.quantize(&[0.0; 32], ActFormat::Q8_1);
        assert_eq!((a.d[0], a.s[0]), (0.0, 0.0));
    }

    /// The SIMD kernels and quantizers (AVX2 on x86_64, simd128 on WebAssembly) against the
    /// scalar reference, bit for bit.
    #[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
    mod simd {
        use super::*;

        /// Every format with a SIMD kernel on this target: on x86_64 every format except the
        /// float ones; on WebAssembly the first eight quantized ones, the 4-bit table ones,
        /// Q2_K, Q3_K and TQ2_0 (the grid ones and TQ1_0 run scalar there).
        #[cfg(target_arch = "x86_64")]
        const QUANTIZED: [Format; 22] = [
            Format::Q8_0,
            Format::Q5_0,
            Format::Q4K,
            Format::Q6K,
            Format::Q4_1,
            Format::Q4_0,
            Format::Q5_1,
            Format::Q5K,
            Format::Q2K,
            Format::Q3K,
            Format::IQ2XXS,
            Format::IQ2XS,
            Format::IQ3XXS,
            Format::IQ1S,
            Format::IQ4NL,
            Format::IQ3S,
            Format::IQ2S,
            Format::IQ4XS,
            Format::IQ1M,
            Format::TQ1_0,
            Format::TQ2_0,
            Format::MXFP4,
        ];
        #[cfg(target_arch = "wasm32")]
        const QUANTIZED: [Format; 14] = [
            Format::Q8_0,
            Format::Q5_0,
            Format::Q4K,
            Format::Q6K,
            Format::Q4_1,
            Format::Q4_0,
            Format::Q5_1,
            Format::Q5K,
            Format::IQ4NL,
            Format::IQ4XS,
            Format::MXFP4,
            Format::Q2K,
            Format::Q3K,
            Format::TQ2_0,
        ];

        /// Formats without a SIMD kernel get `None` from the target's `dot`, so `dot` takes the
        /// scalar path (and still gives the scalar result).
        #[cfg_attr(not(target_arch = "wasm32"), test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn formats_without_kernels_fall_back_to_scalar() {
            let mut rng = Rng(0x3C6E_F372_FE94_F82B);
            for format in ALL.into_iter().filter(|f| !QUANTIZED.contains(f)) {
                let (per_block, _) = format.block();
                let blocks = 512 / per_block;
                let row = random_row(format, blocks, &mut rng);
                let x: Vec<f32> = (0..blocks * per_block).map(|_| rng.f()).collect();
                let mut act = Activations::default();
                act.quantize(&x, format.act());
                #[cfg(target_arch = "x86_64")]
                let got = crate::kernels::x86::dot(format, &row, &act);
                #[cfg(target_arch = "wasm32")]
                let got = crate::kernels::wasm::dot(format, &row, &act);
                assert!(got.is_none(), "{format:?} has a kernel: add it to QUANTIZED");
                assert_eq!(dot(format, &row, &act).to_bits(), dot_scalar(format, &row, &act).to_bits(), "{format:?}");
            }
        }

        /// The SIMD kernel's result. On x86_64 a CPU without AVX2/FMA/F16C has none, which
        /// fails the test only when `CANDLEWICK_REQUIRE_SIMD` is set (elsewhere such a CPU just
        /// skips the comparison); on WebAssembly there must always be one.
        fn simd_dot(format: Format, row: &[u8], act: &Activations) -> Option<f32> {
            #[cfg(target_arch = "x86_64")]
            let got = crate::kernels::x86::dot(format, row, act);
            #[cfg(target_arch = "wasm32")]
            let got = crate::kernels::wasm::dot(format, row, act);
            let optional = cfg!(target_arch = "x86_64") && std::env::var_os("CANDLEWICK_REQUIRE_SIMD").is_none();
            assert!(got.is_some() || optional, "no SIMD kernel for {format:?}");
            got
        }

        /// The SIMD quantizer's activations, or `None` as [`simd_dot`].
        fn simd_quantize(x: &[f32], format: ActFormat) -> Option<Activations> {
            let mut act = Activations::default();
            #[cfg(target_arch = "x86_64")]
            let done = crate::kernels::x86::quantize(&mut act, x, format);
            #[cfg(target_arch = "wasm32")]
            let done = crate::kernels::wasm::quantize(&mut act, x, format);
            let optional = cfg!(target_arch = "x86_64") && std::env::var_os("CANDLEWICK_REQUIRE_SIMD").is_none();
            assert!(done || optional, "no SIMD quantizer");
            done.then_some(act)
        }

        /// The SIMD kernels give exactly the scalar result for random blocks, with block counts
        /// that exercise every size of the last, partial group of blocks (the 32-value kernels
        /// take eight blocks at a time on x86_64, four on WebAssembly) and no group at all.
        #[cfg_attr(not(target_arch = "wasm32"), test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn simd_dot_is_bit_identical_to_scalar() {
            let mut rng = Rng(0x2545_F491_4F6C_DD1D);
            for format in QUANTIZED {
                let (per_block, _) = format.block();
                for blocks in [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 23] {
                    for trial in 0..20 {
                        let row = random_row(format, blocks, &mut rng);
                        // Some rows of activations at full scale, where every value is ±127, and
                        // some so small (subnormal) that the quantizer's scale overflows.
                        let x: Vec<f32> = (0..blocks * per_block)
                            .map(|_| match trial % 5 {
                                0 => rng.f().signum(),
                                1 => rng.f() * 1e-44,
                                _ => rng.f(),
                            })
                            .collect();
                        let mut act = Activations::default();
                        act.quantize(&x, format.act());
                        let want = dot_scalar(format, &row, &act);
                        let Some(got) = simd_dot(format, &row, &act) else { return };
                        assert_eq!(got.to_bits(), want.to_bits(), "{format:?} ×{blocks} trial {trial}: {got} vs {want}");
                    }
                }
            }
        }

        /// The extreme weight bytes (every bit set, every bit clear, -128, 127) against
        /// activations at ±127: no pair sum of the SIMD kernels may saturate.
        #[cfg_attr(not(target_arch = "wasm32"), test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn simd_dot_handles_extreme_values() {
            let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
            for format in QUANTIZED {
                let (per_block, _) = format.block();
                for fill in [0x00u8, 0xFF, 0x80, 0x7F, 0x55] {
                    for sign in [1.0f32, -1.0] {
                        let blocks = 9;
                        let mut row = random_row(format, blocks, &mut rng);
                        let scales = random_row(format, blocks, &mut rng);
                        row.fill(fill);
                        // Keep finite f16 scales: copy them from a well-formed row.
                        let size = format.block().1;
                        for (b, s) in row.chunks_exact_mut(size).zip(scales.chunks_exact(size)) {
                            for &at in format.f16_scale_offsets() {
                                b[at..at + 2].copy_from_slice(&s[at..at + 2]);
                            }
                            if format == Format::IQ1M {
                                set_scale(format, b, f16::from_f32(0.01 * sign));
                            }
                        }
                        let x: Vec<f32> = (0..blocks * per_block).map(|i| if i % 3 == 0 { -sign } else { sign }).collect();
                        let mut act = Activations::default();
                        act.quantize(&x, format.act());
                        let want = dot_scalar(format, &row, &act);
                        let Some(got) = simd_dot(format, &row, &act) else { return };
                        assert_eq!(got.to_bits(), want.to_bits(), "{format:?} fill {fill:#x} sign {sign}: {got} vs {want}");
                    }
                }
            }
        }

        /// Every f16 scale there is, in every lane of a group of blocks and in the tail: the
        /// kernels' own f16 widening must agree with `half` on zeros, subnormals, infinities
        /// and NaNs (compared as the scalar code's result, so only a NaN result may differ, in
        /// its payload).
        #[cfg_attr(not(target_arch = "wasm32"), test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn simd_dot_widens_every_f16_scale() {
            let mut rng = Rng(0x0123_4567_89AB_CDEF);
            for format in [Format::Q4_0, Format::Q4_1] {
                let blocks = 9;
                let size = format.block().1;
                let x: Vec<f32> = (0..blocks * 32).map(|_| rng.f()).collect();
                let mut act = Activations::default();
                act.quantize(&x, format.act());
                let mut row = random_row(format, blocks, &mut rng);
                for bits in 0..=u16::MAX {
                    // Scale and minimum of block `bits % 9` take the pattern; the others keep
                    // their random finite ones.
                    let b = &mut row[(bits as usize % blocks) * size..];
                    b[0..2].copy_from_slice(&bits.to_le_bytes());
                    if format == Format::Q4_1 {
                        b[2..4].copy_from_slice(&bits.rotate_left(7).to_le_bytes());
                    }
                    let want = dot_scalar(format, &row, &act);
                    let Some(got) = simd_dot(format, &row, &act) else { return };
                    assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{format:?} f16 {bits:#06x}: {got} vs {want}");
                }
            }
        }

        /// The SIMD quantizers give exactly the scalar activations: random rows, and blocks that
        /// are all zero, hold NaNs or infinities, tie in magnitude, or are tiny enough (subnormal)
        /// that the scale overflows and Rust's saturating casts decide the values.
        #[cfg_attr(not(target_arch = "wasm32"), test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn simd_quantize_is_bit_identical_to_scalar() {
            let mut rng = Rng(0xD1B5_4A32_D192_ED03);
            let specials: [fn(usize, f32) -> f32; 7] = [
                |_, _| 0.0,
                |i, v| if i % 37 == 5 { f32::NAN } else { v },
                |i, v| if i % 53 == 7 { f32::INFINITY } else { v },
                |i, v| if i % 41 == 3 { f32::NEG_INFINITY } else { v * 1e-3 },
                |i, _| if i % 2 == 0 { 0.5 } else { -0.5 },
                |i, v| if i % 3 == 0 { f32::from_bits(1 + (i as u32 % 5)) } else { v * 1e-44 },
                |i, v| if i % 5 == 0 { -0.0 } else { v * 1e30 },
            ];
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for format in [ActFormat::Q8_0, ActFormat::Q8_1, ActFormat::Q8K] {
                let n = 256 * 3;
                for trial in 0..40 {
                    let mut x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
                    if let Some(special) = specials.get(trial % 10) {
                        // Only the middle block is special, so normal blocks surround it.
                        for (i, v) in x.iter_mut().enumerate().skip(256).take(256) {
                            *v = special(i, *v);
                        }
                    }
                    let mut want = Activations::default();
                    want.quantize_scalar(&x, format);
                    let Some(got) = simd_quantize(&x, format) else { return };
                    assert_eq!(got.qs, want.qs, "{format:?} trial {trial}");
                    assert_eq!(bits(&got.d), bits(&want.d), "{format:?} trial {trial}");
                    assert_eq!(bits(&got.s), bits(&want.s), "{format:?} trial {trial}");
                    assert_eq!(got.bsums, want.bsums, "{format:?} trial {trial}");
                    assert!(got.f32s.is_empty());
                    // The 16-bit copy, where the target's quantizer makes one.
                    if cfg!(target_arch = "wasm32") {
                        assert_eq!(got.qs16, got.qs.iter().map(|&q| i16::from(q)).collect::<Vec<_>>(), "{format:?} trial {trial}");
                    }
                    assert!(want.qs16.is_empty());
                }
            }
        }

        /// Activations without the 16-bit copy (from the scalar quantizer) send WebAssembly's
        /// `dot` to the scalar code rather than to kernels that would read nothing.
        #[cfg(target_arch = "wasm32")]
        #[wasm_bindgen_test::wasm_bindgen_test]
        fn wasm_dot_needs_the_16_bit_activations() {
            let mut rng = Rng(0x7F4A_7C15_9E37_79B9);
            let row = random_row(Format::Q8_0, 3, &mut rng);
            let x: Vec<f32> = (0..96).map(|_| rng.f()).collect();
            let mut act = Activations::default();
            act.quantize(&x, ActFormat::Q8_0);
            assert!(crate::kernels::wasm::dot(Format::Q8_0, &row, &act).is_some());
            act.quantize_scalar(&x, ActFormat::Q8_0);
            assert!(crate::kernels::wasm::dot(Format::Q8_0, &row, &act).is_none());
            assert_eq!(dot(Format::Q8_0, &row, &act).to_bits(), dot_scalar(Format::Q8_0, &row, &act).to_bits());
        }

        /// Times `dot` over whole matrices of the shapes the models use, and the activation
        /// quantizers, scalar against SIMD: natively
        /// `cargo test --release --lib kernels -- --ignored --nocapture dot_speed`, on
        /// WebAssembly the same with `--target wasm32-unknown-unknown` (and
        /// `wasm-bindgen-test-runner` as the runner).
        #[cfg_attr(not(target_arch = "wasm32"), test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        #[ignore = "a benchmark"]
        fn dot_speed() {
            use std::hint::black_box;
            // `std::time::Instant` panics on wasm32-unknown-unknown.
            use web_time::Instant;
            // Node shows the test's console output; standard output goes nowhere there.
            #[cfg(target_arch = "wasm32")]
            use wasm_bindgen_test::console_log as report;
            #[cfg(not(target_arch = "wasm32"))]
            use std::println as report;
            let mut rng = Rng(0x1234_5678_9ABC_DEF1);
            let shapes = [
                (Format::Q5_0, 896, 4864),
                (Format::Q8_0, 896, 4864),
                (Format::Q4K, 896, 4864),
                (Format::Q6K, 896, 4864),
                (Format::Q4_1, 576, 1536),
                (Format::Q4_0, 896, 4864),
                (Format::Q5_1, 896, 4864),
                (Format::Q5K, 896, 4864),
                // Kimi K2's expert matrices (gate/up 2048×7168, down 7168×2048), in the
                // formats of its files.
                (Format::IQ1S, 2048, 7168),
                (Format::IQ1M, 2048, 7168),
                (Format::IQ2XXS, 2048, 7168),
                (Format::IQ2XS, 2048, 7168),
                (Format::IQ2S, 2048, 7168),
                (Format::IQ3XXS, 2048, 7168),
                (Format::IQ3S, 2048, 7168),
                (Format::IQ4XS, 2048, 7168),
                (Format::IQ4NL, 2048, 7168),
                (Format::MXFP4, 2048, 7168),
                (Format::Q2K, 2048, 7168),
                (Format::Q3K, 2048, 7168),
                (Format::TQ1_0, 2048, 7168),
                (Format::TQ2_0, 2048, 7168),
                (Format::IQ2XXS, 7168, 2048),
                (Format::IQ1S, 7168, 2048),
                (Format::Q4K, 2048, 7168),
            ];
            // `CANDLEWICK_SPEED_FORMATS=IQ1S,Q2K` times only those formats.
            let only = std::env::var("CANDLEWICK_SPEED_FORMATS").ok();
            let shapes = shapes.into_iter().filter(|(f, _, _)| only.as_ref().is_none_or(|o| o.split(',').any(|n| n == format!("{f:?}"))));
            for (format, rows, cols) in shapes {
                let (per_block, size) = format.block();
                let data = random_row(format, rows * cols / per_block, &mut rng);
                let row_bytes = cols / per_block * size;
                let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
                let mut act = Activations::default();
                act.quantize(&x, format.act());
                // The best of several passes over the matrix, single-threaded.
                let time = |f: &dyn Fn(&[u8]) -> f32| {
                    let mut best = f64::INFINITY;
                    let mut check = 0f32;
                    for _ in 0..15 {
                        let start = Instant::now();
                        for row in data.chunks_exact(row_bytes) {
                            check += f(black_box(row));
                        }
                        best = best.min(start.elapsed().as_secs_f64());
                    }
                    black_box(check);
                    best
                };
                let scalar = time(&|row| dot_scalar(format, row, &act));
                let simd = time(&|row| dot(format, row, &act));
                let gb = data.len() as f64 / 1e9;
                report!(
                    "{format:?} {rows}×{cols}: scalar {:.3} ms, SIMD {:.3} ms ({:.1} GB/s), {:.1}× faster",
                    scalar * 1e3,
                    simd * 1e3,
                    gb / simd,
                    scalar / simd
                );
            }
            for format in [ActFormat::Q8_0, ActFormat::Q8_1, ActFormat::Q8K] {
                let x: Vec<f32> = (0..4864 * 16).map(|_| rng.f()).collect();
                let mut act = Activations::default();
                let time = |f: &mut dyn FnMut()| {
                    let mut best = f64::INFINITY;
                    for _ in 0..15 {
                        let start = Instant::now();
                        f();
                        best = best.min(start.elapsed().as_secs_f64());
                    }
                    best
                };
                let scalar = time(&mut || act.quantize_scalar(black_box(&x), format));
                let simd = time(&mut || act.quantize(black_box(&x), format));
                report!("quantize {format:?} 16×4864: scalar {:.1} µs, SIMD {:.1} µs, {:.1}× faster", scalar * 1e6, simd * 1e6, scalar / simd);
            }
        }
    }
}
