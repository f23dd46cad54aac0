//! The CPU's kernels: every quantized matrix product and embedding lookup the CPU backend
//! ([`crate::backend::Cpu`]) runs goes through [`QMatrix`] (with a bias, [`QLinear`]), so the
//! backend never sees how products are computed.
//!
//! The block formats real GGUF files use are computed here with llama.cpp's arithmetic
//! ([`blocks`]): activations quantized per block exactly as llama.cpp quantizes them, exact
//! integer block sums, f32 scaling. Every type llama.cpp's CPU backend runs is one of them; any
//! other type is an error.
//!
//! On x86_64 CPUs with AVX-512 VNNI, matrices are repacked at load time into strips of sixteen
//! rows (`strips`), which the kernels of `avx512` multiply by a whole group of activation
//! rows at a time (prefill) or by one (decoding); the results are the scalar code's to the bit.

pub mod blocks;
// The lookup tables of the IQ formats (generated data) and the scalar reference of the formats
// added after the first ten.
#[rustfmt::skip]
mod grids;
mod lowbit;
// SIMD is written per architecture: the x86_64 kernels (AVX2, detected at run time) and the
// WebAssembly ones (simd128, a compile-time feature) exist only where their intrinsics do, and
// `blocks::dot` falls back to its scalar code on every other target. On x86_64 CPUs with
// AVX-512 VNNI, matrices are repacked into strips of rows at load time (`strips`) for the
// kernels of `avx512`.
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod strips;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(target_arch = "x86_64")]
mod x86;



pub use blocks::Format;
use blocks::Activations;

use crate::bytes::Bytes;
use crate::error::{Error, Result};

/// The ggml types [`QMatrix`] runs: every type llama.cpp's CPU backend runs weights in.
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4";

/// Weight rows handed to one parallel task (rows in the file's layout).
const ROWS_PER_TASK: usize = 32;

/// Activation rows from which the codebook formats' rows go sixteen at a time
/// ([`x86::dot_tiles`]) rather than one at a time: a tile's decoding costs more than a row's
/// (its values are transposed) and each activation row less than half as much. One thread,
/// from memory: IQ1_S 2048×7168 one row 1.18-1.22 ms against 1.24-1.26, two rows 1.26 (rows
/// in cache: 1.53 by rows), five 1.55; IQ2_XXS 7168×2048 and IQ4_XS even at one row, IQ2_XXS
/// two rows 1.31, five 1.60 (by rows in cache: 1.30, 2.22).
#[cfg(target_arch = "x86_64")]
fn tiles_from(format: Format) -> usize {
    match format {
        Format::IQ1S => 1,
        _ => 2,
    }
}

/// Multiply-adds a parallel task takes (rows in strips): a few microseconds, unless that
/// leaves fewer than `MIN_TASKS` tasks.
#[cfg(target_arch = "x86_64")]
const TASK_WORK: usize = 1 << 16;

/// Parallel tasks a product is split into at least, where it has enough strips: decoding's small
/// products then still keep every thread busy to the end.
#[cfg(target_arch = "x86_64")]
const MIN_TASKS: usize = 8;

/// Multiply-adds below which a product runs whole on the calling thread: waking another thread
/// and waiting for it costs more than it saves. (SmolLM2's layers, 576 wide, decoded slower on
/// two threads than on one.)
#[cfg(target_arch = "x86_64")]
const SERIAL_WORK: usize = 1 << 20;

/// Bytes of strips a task repacks at most when a matrix is repacked for one product: they stay
/// in the cache while the task multiplies them.
#[cfg(target_arch = "x86_64")]
const TASK_STRIP_BYTES: usize = 256 << 10;

/// Parallel tasks a product is split into at most (rows in strips).
#[cfg(target_arch = "x86_64")]
const MAX_TASKS: usize = 64;

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
    /// A format computed here, its rows repacked into strips of `strips::ROWS` for the AVX-512
    /// VNNI kernels; `data` holds `⌈rows / ROWS⌉` strips.
    #[cfg(target_arch = "x86_64")]
    Strips { format: Format, data: Bytes },
}

/// Where a product's strips come from.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum StripSource<'a> {
    /// A matrix repacked at load: its strips.
    Packed(&'a [u8]),
    /// A matrix in the file's layout that pays for repacking for this product alone (a prompt's
    /// rows through an expert or a layer beyond the repacking budget): its rows, which each task
    /// repacks, its own strips at a time, into a buffer of its thread's just before it
    /// multiplies them.
    Rows(&'a [u8]),
}

impl QMatrix {
    /// A matrix of ggml type `ggml_type` from its raw bytes, repacked for this CPU's kernels
    /// where they would repack it (see [`QMatrix::would_repack`]), else shared rather than
    /// copied.
    ///
    /// # Errors
    /// [`Error::Compute`] when the type is unknown or the sizes do not fit the format.
    pub fn new(ggml_type: u32, data: impl Into<Bytes>, rows: usize, cols: usize) -> Result<QMatrix> {
        QMatrix::load(ggml_type, data, rows, cols, QMatrix::would_repack(ggml_type, rows, cols))
    }

    /// Whether this CPU's kernels run faster on a matrix of this type and shape repacked (into
    /// the AVX-512 VNNI strips of sixteen rows): where they exist, unless padding the last strip
    /// would add more than an eighth of the rows.
    pub fn would_repack(ggml_type: u32, rows: usize, cols: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(format) = Format::from_ggml(ggml_type) {
            return strips::supported(format) && avx512::available() && cols > 0 && rows.next_multiple_of(strips::ROWS) - rows <= rows / 8;
        }
        let _ = (ggml_type, rows, cols);
        false
    }

    /// Whether repacking a matrix of this type pays when it is only ever multiplied by one
    /// activation row (the output layer): the simple block formats' strips are read from memory
    /// about twice as fast as their rows (Q8_0 151936×896: 40 against 22 GB/s), Q4_K's and
    /// Q6_K's faster too since their strips prefetch across pages (one thread: Q4_K
    /// 18432×7168 23.7 against 15.8 GB/s, Q6_K 16384×7168 20.3 against 16.0; two threads 34.1
    /// against 28.4 and 37.4 against 28.9), Q5_K's no faster (16.5 against 16.6), so a Q5_K
    /// output layer would spend the repacking budget for nothing.
    pub fn repacking_pays_for_one_row(ggml_type: u32) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(format) = Format::from_ggml(ggml_type) {
            return strips::pays_for_one_row(format);
        }
        let _ = ggml_type;
        false
    }

    /// A matrix of ggml type `ggml_type` from its raw bytes: a repacked copy when `repack` (and
    /// [`QMatrix::would_repack`]), else the bytes in place, shared rather than copied.
    ///
    /// # Errors
    /// [`Error::Compute`] when the type is unknown or the sizes do not fit the format.
    pub fn load(ggml_type: u32, data: impl Into<Bytes>, rows: usize, cols: usize, repack: bool) -> Result<QMatrix> {
        let data = data.into();
        let Some(format) = Format::from_ggml(ggml_type) else {
            return Err(Error::Compute(format!("ggml type {ggml_type} is not supported (candlewick runs every type llama.cpp's CPU backend runs: {})", SUPPORTED_TYPES)));
        };
        let (per_block, block_bytes) = format.block();
        let expected = (cols / per_block).checked_mul(block_bytes).and_then(|row| row.checked_mul(rows));
        if !cols.is_multiple_of(per_block) || expected != Some(data.len()) {
            return Err(Error::Compute(format!("{rows}×{cols} does not fit {format:?} blocks of {per_block} values in {} bytes", data.len())));
        }
        #[cfg(target_arch = "x86_64")]
        if repack && QMatrix::would_repack(ggml_type, rows, cols) {
            let data = strips::repack(format, &data, rows, cols).into();
            return Ok(QMatrix { kind: Kind::Strips { format, data }, rows, cols });
        }
        let _ = repack;
        let row_bytes = cols / per_block * block_bytes;
        Ok(QMatrix { kind: Kind::Blocks { format, data, row_bytes }, rows, cols })
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The rows `range` of this matrix, sharing its bytes: `None` unless the range lies inside
    /// it and, for a matrix in strips, starts on a strip (a multiple of [`QMatrix::PART_ROWS`])
    /// and ends on one or at the last row. Each row's products are the whole matrix's.
    pub fn part(&self, range: std::ops::Range<usize>) -> Option<QMatrix> {
        if range.start > range.end || range.end > self.rows {
            return None;
        }
        let kind = match &self.kind {
            Kind::Blocks { format, data, row_bytes } => {
                Kind::Blocks { format: *format, data: data.slice(range.start * row_bytes..range.end * row_bytes)?, row_bytes: *row_bytes }
            }
            #[cfg(target_arch = "x86_64")]
            Kind::Strips { format, data } => {
                use strips::ROWS;
                if !range.start.is_multiple_of(ROWS) || !(range.end.is_multiple_of(ROWS) || range.end == self.rows) {
                    return None;
                }
                let strip_bytes = self.cols / format.block().0 * strips::tile_bytes(*format);
                Kind::Strips { format: *format, data: data.slice(range.start / ROWS * strip_bytes..range.end.div_ceil(ROWS) * strip_bytes)? }
            }
        };
        Some(QMatrix { kind, rows: range.len(), cols: self.cols })
    }

    /// Row counts that [`QMatrix::part`] accepts a range starting at a multiple of.
    pub const PART_ROWS: usize = 16;

    /// Columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x · selfᵀ`: `x` holds `m` rows of `cols` values; the result `m` rows of `rows`.
    ///
    /// # Errors
    /// [`Error::Compute`] when `x` is not `m × cols` values.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        self.matmul_quantized(&self.quantize(x, m)?)
    }

    /// The block format the matrix is stored in.
    fn format(&self) -> Format {
        match &self.kind {
            Kind::Blocks { format, .. } => *format,
            #[cfg(target_arch = "x86_64")]
            Kind::Strips { format, .. } => *format,
        }
    }

    /// `x` (`m` rows of `cols` values) quantized as this matrix's products take it, for
    /// [`QMatrix::matmul_quantized`] by this matrix, its parts, and any other matrix of the same
    /// format and width ([`QuantizedRows::fits`]).
    ///
    /// # Errors
    /// [`Error::Compute`] when `x` is not `m × cols` values.
    pub fn quantize(&self, x: &[f32], m: usize) -> Result<QuantizedRows> {
        let k = self.cols;
        if x.len() != m * k {
            return Err(Error::Compute(format!("{} values are not {m} rows of {k}", x.len())));
        }
        Ok(QuantizedRows { format: self.format(), cols: k, rows: quantize_rows(x, m, self.format()) })
    }

    /// [`QMatrix::matmul`] of rows quantized already: `m` rows of `rows` values.
    ///
    /// # Errors
    /// [`Error::Compute`] when `x` was quantized for another format or width.
    pub fn matmul_quantized(&self, x: &QuantizedRows) -> Result<Vec<f32>> {
        if !x.fits(self) {
            return Err(Error::Compute(format!("activations quantized for {:?} × {} multiplied by {:?} × {}", x.format, x.cols, self.format(), self.cols)));
        }
        let (format, acts, m) = (x.format, &x.rows[..], x.rows.len());
        match &self.kind {
            #[cfg(target_arch = "x86_64")]
            Kind::Blocks { data, .. } if strips::pays_for_one_product(format, m) && avx512::available() => {
                Ok(self.matmul_strips(format, StripSource::Rows(data), acts))
            }
            Kind::Blocks { data, row_bytes, .. } => Ok(self.matmul_rows(format, data, *row_bytes, acts)),
            #[cfg(target_arch = "x86_64")]
            Kind::Strips { data, .. } => Ok(self.matmul_strips(format, StripSource::Packed(data), acts)),
        }
    }

    /// [`QMatrix::matmul`] of rows in the file's layout: each weight row dotted with each
    /// activation row.
    fn matmul_rows(&self, format: Format, data: &[u8], row_bytes: usize, acts: &[Activations]) -> Vec<f32> {
        let m = acts.len();
        // by_row[r·m + i] = row r of the weights · activation row i
        let n = self.rows;
        let mut by_row = vec![0f32; n * m];
        crate::platform::parallel_chunks(&mut by_row, ROWS_PER_TASK * m, |task, out| {
            let first = task * ROWS_PER_TASK;
            let row = |r: usize| &data[(first + r) * row_bytes..(first + r + 1) * row_bytes];
            // F32 rows eight at a time (each summed in order, as one row alone), where the CPU
            // can; the rest one by one.
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if format == Format::F32 {
                'eights: while (done + 8) * m <= out.len() {
                    let rows: [&[u8]; 8] = std::array::from_fn(|j| row(done + j));
                    for (i, act) in acts.iter().enumerate() {
                        let Some(sums) = x86::floats::dot_rows8(rows, &act.f32s) else { break 'eights };
                        for (j, sum) in sums.into_iter().enumerate() {
                            out[(done + j) * m + i] = sum;
                        }
                    }
                    done += 8;
                }
            }
            // One activation row (decoding): the K-quants' rows in one call, where the CPU can.
            #[cfg(target_arch = "x86_64")]
            if m == 1 && done == 0 && x86::dot_each(format, &data[first * row_bytes..(first + out.len()) * row_bytes], row_bytes, &acts[0], out) {
                done = out.len();
            }
            // Codebook rows sixteen at a time, for several activation rows, where the CPU can.
            #[cfg(target_arch = "x86_64")]
            if m >= tiles_from(format) {
                const T: usize = x86::TILE_ROWS;
                while (done + T) * m <= out.len() && x86::dot_tiles(format, &data[(first + done) * row_bytes..(first + done + T) * row_bytes], acts, &mut out[done * m..(done + T) * m]) {
                    done += T;
                }
            }
            for (r, out) in out.chunks_exact_mut(m).enumerate().skip(done) {
                let row = row(r);
                #[cfg(target_arch = "x86_64")]
                if m > 1 && x86::dot_rows(format, row, acts, out) {
                    continue;
                }
                for (o, act) in out.iter_mut().zip(acts) {
                    *o = blocks::dot(format, row, act);
                }
            }
        });
        if m == 1 {
            return by_row;
        }
        let mut out = vec![0f32; m * n];
        for (r, values) in by_row.chunks_exact(m).enumerate() {
            for (i, v) in values.iter().enumerate() {
                out[i * n + r] = *v;
            }
        }
        out
    }

    /// [`QMatrix::matmul`] of rows in strips: each task takes whole strips and every activation
    /// row.
    #[cfg(target_arch = "x86_64")]
    fn matmul_strips(&self, format: Format, source: StripSource, acts: &[Activations]) -> Vec<f32> {
        use std::cell::RefCell;
        use strips::ROWS;
        thread_local! {
            static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let (m, n, k) = (acts.len(), self.rows, self.cols);
        let strip_bytes = k / format.block().0 * strips::tile_bytes(format);
        let count = match source {
            StripSource::Packed(data) => data.len() / strip_bytes,
            StripSource::Rows(_) => n.div_ceil(ROWS),
        };
        // Strips per task: TASK_WORK multiply-adds, between MIN_TASKS and MAX_TASKS tasks (and
        // no more strips than fit TASK_STRIP_BYTES where the task repacks them).
        let mut per_task = if count * ROWS * k * m < SERIAL_WORK {
            count
        } else {
            TASK_WORK.div_ceil(ROWS * k * m).min(count.div_ceil(MIN_TASKS)).max(count.div_ceil(MAX_TASKS)).max(1)
        };
        if let StripSource::Rows(_) = source {
            per_task = per_task.min((TASK_STRIP_BYTES / strip_bytes).max(1));
        }
        let rows = avx512::prepare(format, acts);
        // Per task, `[m][its strips × ROWS]`.
        let mut by_task = vec![0f32; count * ROWS * m];
        crate::platform::parallel_chunks(&mut by_task, per_task * ROWS * m, |task, out| {
            let here = out.len() / (ROWS * m);
            let first = task * per_task;
            let multiply = |data: &[u8], out: &mut [f32]| {
                if !avx512::matmul(format, data, k, &rows, out) {
                    // Unreachable on a CPU with AVX-512 VNNI: the scalar code, row by row.
                    for r in 0..here * ROWS {
                        let row = strips::row(format, data, k, r);
                        for (i, act) in acts.iter().enumerate() {
                            out[i * here * ROWS + r] = blocks::dot(format, &row, act);
                        }
                    }
                }
            };
            match source {
                StripSource::Packed(data) => multiply(&data[first * strip_bytes..(first + here) * strip_bytes], out),
                StripSource::Rows(data) => {
                    let mut run = |buffer: &mut Vec<u8>| {
                        buffer.resize(here * strip_bytes, 0);
                        strips::repack_part(format, data, k, first, &mut buffer[..here * strip_bytes]);
                        multiply(&buffer[..here * strip_bytes], out);
                    };
                    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                        Ok(mut buffer) => run(&mut buffer),
                        Err(_) => run(&mut Vec::new()),
                    });
                }
            }
        });
        if m == 1 {
            by_task.truncate(n);
            return by_task;
        }
        let mut out = vec![0f32; m * n];
        for (task, values) in by_task.chunks(per_task * ROWS * m).enumerate() {
            let (first, width) = (task * per_task * ROWS, values.len() / m);
            // The padding rows of the last strip have no place in `out`.
            let take = width.min(n.saturating_sub(first));
            for (i, values) in values.chunks_exact(width).enumerate() {
                out[i * n + first..i * n + first + take].copy_from_slice(&values[..take]);
            }
        }
        out
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
            Kind::Blocks { format, data, row_bytes } => {
                let mut out = vec![0f32; ids.len() * self.cols];
                for (&id, o) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
                    let at = id as usize * row_bytes;
                    blocks::dequantize(*format, &data[at..at + row_bytes], o);
                }
                Ok(out)
            }
            #[cfg(target_arch = "x86_64")]
            Kind::Strips { format, data } => {
                let mut out = vec![0f32; ids.len() * self.cols];
                for (&id, o) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
                    blocks::dequantize(*format, &strips::row(*format, data, self.cols, id as usize), o);
                }
                Ok(out)
            }
        }
    }

    /// Every value, dequantized, row after row (for small tensors such as norms and biases).
    ///
    /// # Errors
    /// None in practice: every row is in range.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.gather(&(0..self.rows as u32).collect::<Vec<_>>())
    }
}

// A part of a matrix in strips starts on a strip.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(QMatrix::PART_ROWS == strips::ROWS);

/// Activation rows quantized for the products of one block format and width
/// ([`QMatrix::quantize`]): quantized once, they serve every matrix that fits them — a
/// matrix's parts, an expert's gate and up.
pub struct QuantizedRows {
    format: Format,
    cols: usize,
    rows: Vec<Activations>,
}

impl QuantizedRows {
    /// Whether `matrix` takes these rows: its format and width are theirs.
    pub fn fits(&self, matrix: &QMatrix) -> bool {
        matrix.format() == self.format && matrix.cols == self.cols
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }
}

/// A linear layer `y = x · Wᵀ (+ b)` over a quantized weight of shape `(out, in)`.
#[derive(Clone)]
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

    /// [`QLinear::forward`] for the outputs `range` only: `m` rows of `range.len()` values,
    /// each equal to the whole layer's.
    ///
    /// # Errors
    /// [`Error::Compute`] on a shape mismatch or a range [`QMatrix::part`] refuses.
    pub fn forward_part(&self, x: &[f32], m: usize, range: std::ops::Range<usize>) -> Result<Vec<f32>> {
        self.forward_part_quantized(&self.weight.quantize(x, m)?, range)
    }

    /// [`QLinear::forward_part`] of rows quantized already (by [`QMatrix::quantize`]).
    ///
    /// # Errors
    /// [`Error::Compute`] when the rows do not fit the weight or [`QMatrix::part`] refuses the
    /// range.
    pub fn forward_part_quantized(&self, x: &QuantizedRows, range: std::ops::Range<usize>) -> Result<Vec<f32>> {
        let Some(weight) = self.weight.part(range.clone()) else {
            return Err(Error::Compute(format!("rows {range:?} of a {}-row matrix", self.weight.rows())));
        };
        let mut y = weight.matmul_quantized(x)?;
        if let Some(b) = &self.bias {
            let b = &b[range];
            for row in y.chunks_exact_mut(b.len().max(1)) {
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

    /// The weight matrix.
    pub fn weight(&self) -> &QMatrix {
        &self.weight
    }
}

/// The `m` rows of `x` quantized for `format`'s kernels; a long prompt's rows in parallel.
fn quantize_rows(x: &[f32], m: usize, format: Format) -> Vec<Activations> {
    const ROWS_PER_TASK: usize = 8;
    let cols = x.len() / m.max(1);
    let mut acts = vec![Activations::default(); m];
    let quantize = |first: usize, acts: &mut [Activations]| {
        for (act, row) in acts.iter_mut().zip(x[first * cols..].chunks_exact(cols.max(1))) {
            act.quantize(row, format.act());
            #[cfg(target_arch = "x86_64")]
            if format == Format::IQ4XS {
                x86::split_runs(act);
            }
        }
    };
    if m <= ROWS_PER_TASK {
        // Decoding: not worth waking the pool.
        quantize(0, &mut acts);
    } else {
        crate::platform::parallel_chunks(&mut acts, ROWS_PER_TASK, |task, acts| quantize(task * ROWS_PER_TASK, acts));
    }
    acts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xorshift;
    use half::f16;

    /// Writes `scale()` as a finite f16 wherever `format` keeps a block's scales (and
    /// minimums), block after block.
    fn set_scales(format: Format, data: &mut [u8], mut scale: impl FnMut() -> f32) {
        for block in data.chunks_exact_mut(format.block().1) {
            for &at in format.f16_scale_offsets() {
                block[at..at + 2].copy_from_slice(&f16::from_f32(scale()).to_le_bytes());
            }
        }
    }

    /// `matmul` gives, bit for bit, the scalar dot product of each weight row with the
    /// scalar-quantized activations, for every block format the kernels compute: 37 rows, so
    /// the last parallel task is a partial one (32 + 5), rows of 7 blocks, so the SIMD kernels
    /// end on a partial group of blocks, and one to nine activation rows (decoding, prefill),
    /// four of them at full scale.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn matmul_is_bit_identical_to_scalar_dots() {
        let mut next = xorshift(0x243F_6A88_85A3_08D3);
        for ggml_type in [0, 2, 3, 6, 7, 8, 12, 13, 14, 16, 17, 18, 19, 21, 22, 23, 29] {
            let format = Format::from_ggml(ggml_type).expect("a block format");
            let (per_block, size) = format.block();
            // F32: whole groups of eight values and a tail; 37 rows: groups of eight rows and a tail.
            let (rows, cols) = (37, if per_block == 1 { 75 } else { 7 * per_block });
            let mut data: Vec<u8> = (0..rows * cols / per_block * size).map(|_| next() as u8).collect();
            set_scales(format, &mut data, || ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1);
            if format == Format::F32 {
                // Finite values; row 3 all negative zeros, whose sum keeps its sign only if summed
                // from -0 as the scalar code sums.
                data = (0..rows * cols).flat_map(|i| if i / cols == 3 { (-0f32).to_le_bytes() } else { ((next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).to_le_bytes() }).collect();
            }
            // As loaded (repacked where the CPU has strips), and in place, in the file's layout
            // (repacked for one product from a few rows on, where the CPU has strips).
            let loaded = QMatrix::new(ggml_type, data.clone(), rows, cols).expect("a well-formed matrix");
            let in_place = QMatrix::load(ggml_type, data.clone(), rows, cols, false).expect("a well-formed matrix");
            assert!(matches!(in_place.kind, Kind::Blocks { .. }));
            for (matrix, m) in [(&loaded, 1), (&loaded, 3), (&in_place, 1), (&in_place, 2), (&in_place, 3), (&in_place, 9), (&in_place, 4)] {
                // Four rows at full scale (every value ±127), the sums at their largest.
                let full = m == 4;
                let x: Vec<f32> = (0..m * cols).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).map(|v| if full { v.signum() } else { v }).collect();
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

    /// Rows repacked into strips (on CPUs with AVX-512 VNNI) give, bit for bit, the scalar dot
    /// products, for every block format: 133 rows, so the last strip holds 5 rows and 11 of
    /// padding; rows of 1, 2 and 7 blocks; 1 to 9 and 13 activation rows, so the kernels meet
    /// whole groups of rows, partial ones and a single row, and the parallel tasks split the
    /// strips evenly or end on a short task; weights that are random, all zero
    /// bits, all one bits, -128 or 127, against activations that are random, at full scale
    /// (every value ±127), or so small (subnormal) that their scale overflows. The strips also
    /// give back every row for embedding lookups. A CPU without AVX-512 VNNI skips the test
    /// (fails it when `CANDLEWICK_REQUIRE_AVX512` is set).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn strips_are_bit_identical_to_scalar_dots() {
        if !avx512::available() {
            assert!(std::env::var_os("CANDLEWICK_REQUIRE_AVX512").is_none(), "no AVX-512 VNNI on this CPU");
            return;
        }
        let mut next = xorshift(0x1F83_D9AB_FB41_BD6B);
        let unit = |next: &mut dyn FnMut() -> u64| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        // Too few rows to pad to a strip: left in the file's layout.
        let few = QMatrix::new(2, vec![0u8; 37 * 18], 37, 32).expect("a well-formed matrix");
        assert!(matches!(few.kind, Kind::Blocks { .. }));
        for ggml_type in [2, 3, 6, 7, 8, 12, 13, 14] {
            let format = Format::from_ggml(ggml_type).expect("a block format");
            let (per_block, size) = format.block();
            for (blocks, fill) in [(1, None), (2, Some(0xFFu8)), (7, None), (7, Some(0x00)), (3, Some(0x80)), (2, Some(0x7F))] {
                let (rows, cols) = (133, blocks * per_block);
                let mut data: Vec<u8> = (0..rows * blocks * size).map(|_| fill.unwrap_or(next() as u8)).collect();
                set_scales(format, &mut data, || unit(&mut next) * 0.1);
                let matrix = QMatrix::new(ggml_type, data.clone(), rows, cols).expect("a well-formed matrix");
                assert!(matches!(matrix.kind, Kind::Strips { .. }), "{format:?} was not repacked");
                for (trial, m) in [1, 2, 3, 4, 5, 6, 7, 8, 9, 13].into_iter().enumerate() {
                    let x: Vec<f32> = (0..m * cols)
                        .map(|_| match trial % 4 {
                            0 => unit(&mut next).signum(),
                            1 => unit(&mut next) * 1e-44,
                            _ => unit(&mut next),
                        })
                        .collect();
                    let got = matrix.matmul(&x, m).expect("matching shapes");
                    for (i, x) in x.chunks_exact(cols).enumerate() {
                        let mut act = Activations::default();
                        act.quantize_scalar(x, format.act());
                        for (r, row) in data.chunks_exact(blocks * size).enumerate() {
                            let want = blocks::dot_scalar(format, row, &act);
                            assert_eq!(got[i * rows + r].to_bits(), want.to_bits(), "{format:?} ×{blocks} fill {fill:?} m={m} row {r} of activation row {i}");
                        }
                    }
                }
                let ids: Vec<u32> = (0..rows as u32).rev().collect();
                let got = matrix.gather(&ids).expect("rows in range");
                for (&id, got) in ids.iter().zip(got.chunks_exact(cols)) {
                    let mut want = vec![0f32; cols];
                    let at = id as usize * blocks * size;
                    blocks::dequantize(format, &data[at..at + blocks * size], &mut want);
                    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{format:?} row {id}");
                }
            }
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    impl QMatrix {
        /// A copy that shares no bytes with `self` (for `matmul_speed`).
        fn deep_copy(self) -> QMatrix {
            let kind = match self.kind {
                Kind::Blocks { format, data, row_bytes } => Kind::Blocks { format, data: data.to_vec().into(), row_bytes },
                #[cfg(target_arch = "x86_64")]
                Kind::Strips { format, data } => Kind::Strips { format, data: data.to_vec().into() },
            };
            QMatrix { kind, ..self }
        }
    }

    /// Times `matmul` over matrices of the shapes the models use, for one activation row
    /// (decoding) and 128 (a prompt), rows in the file's layout against rows in strips where
    /// this CPU has them: `cargo test --release --lib kernels -- --ignored --nocapture
    /// matmul_speed` (`RAYON_NUM_THREADS=1` for one thread; `MATMUL_SPEED_ONLY=6,14` for those
    /// ggml types only).
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    #[ignore = "a benchmark"]
    fn matmul_speed() {
        use std::hint::black_box;
        use std::time::Instant;
        let mut next = xorshift(0x0DDB_1A5E_5BAD_5EED);
        let shapes = [(0, 128, 2048), (12, 768, 2048), (12, 2048, 768), (14, 2048, 768), (3, 16, 576), (3, 1536, 576), (3, 576, 1536), (8, 49152, 576), (6, 4864, 896), (6, 896, 896), (12, 896, 4864), (14, 896, 4864), (8, 151936, 896), (19, 2048, 7168), (16, 7168, 2048), (23, 2048, 7168), (14, 16384, 7168), (12, 18432, 7168), (2, 4864, 896), (7, 4864, 896), (13, 896, 4864), (13, 18432, 7168)];
        let only = std::env::var("MATMUL_SPEED_ONLY").ok();
        for (ggml_type, rows, cols) in shapes {
            if only.as_ref().is_some_and(|only| !only.split(',').any(|t| t == ggml_type.to_string())) {
                continue;
            }
            let format = Format::from_ggml(ggml_type).expect("a block format");
            let (per_block, size) = format.block();
            let mut data: Vec<u8> = (0..rows * cols / per_block * size).map(|_| next() as u8).collect();
            set_scales(format, &mut data, || 0.01);
            let row_bytes = cols / per_block * size;
            let by_rows = QMatrix { kind: Kind::Blocks { format, data: data.clone().into(), row_bytes }, rows, cols };
            let (bytes, start) = (data.len(), Instant::now());
            let repacked = QMatrix::new(ggml_type, data, rows, cols).expect("a well-formed matrix");
            let load = start.elapsed().as_secs_f64();
            println!("{format:?} {rows}×{cols}: loaded in {:.1} ms ({:.2} GB/s)", load * 1e3, bytes as f64 / load / 1e9);
            for m in std::env::var("MATMUL_SPEED_M").ok().map_or(vec![1, 128], |v| v.split(',').filter_map(|m| m.parse().ok()).collect()) {
                if rows * m > 20_000_000 || std::env::var_os("MATMUL_SPEED_LOAD").is_some() {
                    continue;
                }
                let x: Vec<f32> = (0..m * cols).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
                let time = |matrix: &QMatrix| {
                    let mut best = f64::INFINITY;
                    for _ in 0..if m == 1 { 20 } else { 10 } {
                        let start = Instant::now();
                        black_box(matrix.matmul(black_box(&x), m).expect("shapes"));
                        best = best.min(start.elapsed().as_secs_f64());
                    }
                    best
                };
                let (a, b) = (time(&by_rows), time(&repacked));
                let gmacs = |t: f64| (rows * cols * m) as f64 / t / 1e9;
                println!("{format:?} {rows}×{cols} m={m}: rows {:.3} ms ({:.1} GMAC/s), strips {:.3} ms ({:.1} GMAC/s), {:.2}×", a * 1e3, gmacs(a), b * 1e3, gmacs(b), a / b);
            }
            // Decoding reads each matrix from memory, not from the cache: one row (or
            // `MATMUL_SPEED_MEMORY_M`, as a prompt's experts do) against copies of the matrix
            // that together exceed the last-level cache, in turn.
            let mm: usize = std::env::var("MATMUL_SPEED_MEMORY_M").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
            let x: Vec<f32> = (0..mm * cols).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
            let from_memory = |matrix: &QMatrix| {
                let copies: Vec<QMatrix> = (0..(96 << 20) / bytes + 1).map(|_| matrix.clone().deep_copy()).collect();
                let mut best = f64::INFINITY;
                for _ in 0..3 {
                    let start = Instant::now();
                    for matrix in &copies {
                        black_box(matrix.matmul(black_box(&x), mm).expect("shapes"));
                    }
                    best = best.min(start.elapsed().as_secs_f64() / copies.len() as f64);
                }
                best
            };
            let (a, b) = (from_memory(&by_rows), from_memory(&repacked));
            println!("{format:?} {rows}×{cols} m={mm} from memory: rows {:.3} ms ({:.1} GB/s), strips {:.3} ms ({:.1} GB/s)", a * 1e3, bytes as f64 / a / 1e9, b * 1e3, bytes as f64 / b / 1e9);
        }
    }
}
