//! The kernel seam: every quantized matrix product and embedding lookup of the models goes
//! through [`QMatrix`] (wrapped as [`QLinear`] and [`QEmbedding`]), so model code never sees how
//! products are computed.
//!
//! The block formats real GGUF files use are computed here with llama.cpp's arithmetic
//! ([`blocks`]): activations quantized per block exactly as llama.cpp quantizes them, exact
//! integer block sums, f32 scaling. Other formats fall back to Candle's kernels.

pub mod blocks;
// SIMD is written per architecture: the x86_64 kernels (AVX2, detected at run time) and the
// WebAssembly ones (simd128, a compile-time feature) exist only where their intrinsics do, and
// `blocks::dot` falls back to its scalar code on every other target.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

pub use blocks::Format;
use blocks::Activations;

use crate::bytes::Bytes;
use crate::error::{Error, Result};

/// Weight rows handed to one parallel task.
const ROWS_PER_TASK: usize = 32;

/// A quantized matrix of shape `(rows, cols)`, stored as GGUF blocks row after row.
#[derive(Clone)]
pub struct QMatrix {
    kind: Kind,
    rows: usize,
    cols: usize,
}

#[derive(Clone)]
enum Kind {
    /// A format computed here; `data` holds `rows × row_bytes` bytes.
    Blocks { format: Format, data: Bytes, row_bytes: usize },
    /// Any other format, computed by Candle.
    Candle(Arc<QTensor>),
}

impl QMatrix {
    /// A matrix of ggml type `ggml_type` from its raw bytes, which it shares rather than copies.
    ///
    /// # Errors
    /// [`Error::Compute`] when the type is unknown or the sizes do not fit the format.
    pub fn new(ggml_type: u32, data: impl Into<Bytes>, rows: usize, cols: usize) -> Result<QMatrix> {
        let data = data.into();
        if let Some(format) = Format::from_ggml(ggml_type) {
            let (per_block, block_bytes) = format.block();
            if !cols.is_multiple_of(per_block) || data.len() != rows * (cols / per_block) * block_bytes {
                return Err(Error::Compute(format!("{rows}×{cols} does not fit {format:?} blocks of {per_block} values in {} bytes", data.len())));
            }
            let row_bytes = cols / per_block * block_bytes;
            return Ok(QMatrix { kind: Kind::Blocks { format, data, row_bytes }, rows, cols });
        }
        let dtype = candle_dtype(ggml_type).ok_or_else(|| Error::Compute(format!("ggml type {ggml_type} is not supported")))?;
        let storage = QStorage::from_data(Cow::Borrowed(&data[..]), &Device::Cpu, dtype)?;
        Ok(QMatrix { kind: Kind::Candle(Arc::new(QTensor::new(storage, (rows, cols))?)), rows, cols })
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x · selfᵀ`: `x` holds `m` rows of `cols` values; the result `m` rows of `rows`.
    ///
    /// # Errors
    /// [`Error::Compute`] when `x` is not `m × cols` values.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let k = self.cols;
        if x.len() != m * k {
            return Err(Error::Compute(format!("{} values are not {m} rows of {k}", x.len())));
        }
        let (format, data, row_bytes) = match &self.kind {
            Kind::Candle(t) => {
                let x = Tensor::from_slice(x, (m, k), &Device::Cpu)?;
                return Ok(QMatMul::from_arc(t.clone())?.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
            }
            Kind::Blocks { format, data, row_bytes } => (*format, data, *row_bytes),
        };
        let acts: Vec<Activations> = x
            .chunks_exact(k)
            .map(|row| {
                let mut a = Activations::default();
                a.quantize(row, format.act());
                a
            })
            .collect();
        // by_row[r·m + i] = row r of the weights · activation row i
        let n = self.rows;
        let mut by_row = vec![0f32; n * m];
        crate::platform::parallel_chunks(&mut by_row, ROWS_PER_TASK * m, |task, out| {
            let first = task * ROWS_PER_TASK;
            for (r, out) in out.chunks_exact_mut(m).enumerate() {
                let row = &data[(first + r) * row_bytes..(first + r + 1) * row_bytes];
                for (o, act) in out.iter_mut().zip(&acts) {
                    *o = blocks::dot(format, row, act);
                }
            }
        });
        if m == 1 {
            return Ok(by_row);
        }
        let mut out = vec![0f32; m * n];
        for (r, values) in by_row.chunks_exact(m).enumerate() {
            for (i, v) in values.iter().enumerate() {
                out[i * n + r] = *v;
            }
        }
        Ok(out)
    }

    /// Rows `ids`, dequantized, one after the other.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] for an id past the last row.
    pub fn gather(&self, ids: &[u32]) -> Result<Vec<f32>> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.rows) {
            return Err(Error::TokenOutOfRange { id: bad.into(), vocab_size: self.rows, what: "embedding lookup".into() });
        }
        match &self.kind {
            Kind::Candle(t) => Ok(t.embedding(&Tensor::new(ids, &Device::Cpu)?)?.flatten_all()?.to_vec1::<f32>()?),
            Kind::Blocks { format, data, row_bytes } => {
                let mut out = vec![0f32; ids.len() * self.cols];
                for (&id, o) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
                    let at = id as usize * row_bytes;
                    blocks::dequantize(*format, &data[at..at + row_bytes], o);
                }
                Ok(out)
            }
        }
    }

    /// Every value, dequantized, row after row (for small tensors such as norms and biases).
    ///
    /// # Errors
    /// [`Error::Compute`] if Candle fails.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        match &self.kind {
            Kind::Candle(t) => Ok(t.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            Kind::Blocks { .. } => self.gather(&(0..self.rows as u32).collect::<Vec<_>>()),
        }
    }
}

/// A linear layer `y = x · Wᵀ (+ b)` over a quantized weight of shape `(out, in)`.
pub struct QLinear {
    weight: QMatrix,
    /// `[out]`
    bias: Option<Vec<f32>>,
}

impl QLinear {
    /// A layer over `weight`, with an optional bias of `weight.rows()` values.
    pub fn new(weight: QMatrix, bias: Option<Vec<f32>>) -> QLinear {
        QLinear { weight, bias }
    }

    /// `x`: `m` rows of `in` values → `m` rows of `out` values.
    ///
    /// # Errors
    /// [`Error::Compute`] on a shape mismatch.
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let mut y = self.weight.matmul(x, m)?;
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(b.len()) {
                for (v, b) in row.iter_mut().zip(b) {
                    *v += b;
                }
            }
        }
        Ok(y)
    }

    /// Rows of the weight (the output width).
    pub fn out_features(&self) -> usize {
        self.weight.rows()
    }
}

/// A token-embedding table kept quantized; rows are dequantized as they are looked up.
pub struct QEmbedding {
    table: QMatrix,
}

impl QEmbedding {
    /// A table of shape `(vocab, hidden)`.
    pub fn new(table: QMatrix) -> QEmbedding {
        QEmbedding { table }
    }

    /// The rows of `ids`, one after the other.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] when an id is outside the table.
    pub fn lookup(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.table.gather(ids)
    }

    /// The table, for an output layer tied to the embedding (shared, not copied).
    pub fn table(&self) -> QMatrix {
        self.table.clone()
    }
}

/// The Candle type of a ggml type id.
fn candle_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// `matmul` gives, bit for bit, the scalar dot product of each weight row with the
    /// scalar-quantized activations, for every block format the kernels compute: 37 rows, so
    /// the last parallel task is a partial one (32 + 5), rows of 7 blocks, so the SIMD kernels
    /// end on a partial group of blocks, and one or three activation rows (decoding, prefill).
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn matmul_is_bit_identical_to_scalar_dots() {
        let mut state = 0x243F_6A88_85A3_08D3u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for ggml_type in [2, 3, 6, 7, 8, 12, 13, 14] {
            let format = Format::from_ggml(ggml_type).expect("a block format");
            let (per_block, size) = format.block();
            let (rows, cols) = (37, 7 * per_block);
            let mut data: Vec<u8> = (0..rows * cols / per_block * size).map(|_| next() as u8).collect();
            // Finite f16 scales (and minimums) where each format keeps them.
            let scales: &[usize] = match format {
                Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K => &[0, 2],
                Format::Q6K => &[208],
                _ => &[0],
            };
            for block in data.chunks_exact_mut(size) {
                for &at in scales {
                    let scale = (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    block[at..at + 2].copy_from_slice(&f16::from_f32(scale * 0.1).to_le_bytes());
                }
            }
            let matrix = QMatrix::new(ggml_type, data.clone(), rows, cols).expect("a well-formed matrix");
            for m in [1, 3] {
                let x: Vec<f32> = (0..m * cols).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
                let got = matrix.matmul(&x, m).expect("matching shapes");
                for (i, x) in x.chunks_exact(cols).enumerate() {
                    let mut act = Activations::default();
                    act.quantize_scalar(x, format.act());
                    for (r, row) in data.chunks_exact(cols / per_block * size).enumerate() {
                        let want = blocks::dot_scalar(format, row, &act);
                        assert_eq!(got[i * rows + r].to_bits(), want.to_bits(), "{format:?} m={m} row {r} of activation row {i}");
                    }
                }
            }
        }
    }
}
