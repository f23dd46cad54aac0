//! The GPU as a [`Backend`]: the decoder's operations recorded into one command encoder, the
//! activations and the KV cache on the device from the embedding to the logits, submitted by
//! [`Backend::read`].
//!
//! Two things are computed on the host and uploaded, as llama.cpp's GPU backends do with its
//! input layer: the embedding rows of a pass's tokens (a few rows of the table, dequantized as
//! the CPU does), and RoPE's cosines and sines (the CPU's values: WGSL's `sin` and `cos` are
//! only accurate near zero). Neither needs a readback.
//!
//! What this backend does not compute yet is an error when the model is placed or run:
//! mixtures of experts and latent attention's per-head products.

use super::{f32_bytes, gpu_error, groups, read_back, Gpu, GpuMatrix, GpuTensor, Word};
use crate::arch::attention::{rope_angles, Rope, Spec};
use crate::arch::{Activation, AttentionKernel, Experts, Moe, RopeStyle, Weights};
use crate::backend::{Backend, CacheSpec, KvStore, Products};
use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::kernels::QMatrix;

/// A model's weights on the GPU.
pub type GpuWeights = Weights<Gpu>;

/// A weight matrix for the GPU backend: its blocks on the device (none for an embedding table
/// that is only looked up), its bias, and its bytes on the host for the embedding lookup.
#[derive(Clone)]
pub struct GpuLinear {
    host: QMatrix,
    device: Option<GpuMatrix>,
    bias: Option<std::sync::Arc<wgpu::Buffer>>,
}

/// One layer's keys and values on the GPU, `[position][kv head][dim]` f32 each.
pub struct GpuCache {
    gpu: GpuHandle,
    keys: wgpu::Buffer,
    values: wgpu::Buffer,
    spec: CacheSpec,
    len: usize,
}

/// What a cache needs of its device to copy, grow and save itself.
#[derive(Clone)]
struct GpuHandle {
    device: wgpu::Device,
    queue: wgpu::Queue,
}

impl GpuHandle {
    fn buffer(&self, values: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kv cache"),
            size: values.max(1) as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Copies the first `bytes` of each of `pairs` (from, to), in one submission.
    fn copy(&self, pairs: &[(&wgpu::Buffer, &wgpu::Buffer)], bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kv cache copy") });
        for (from, to) in pairs {
            encoder.copy_buffer_to_buffer(from, 0, to, 0, bytes);
        }
        self.queue.submit([encoder.finish()]);
    }
}

impl GpuCache {
    fn width(&self) -> usize {
        self.spec.kv_heads * self.spec.head_dim
    }

    fn value_width(&self) -> usize {
        self.spec.kv_heads * self.spec.value_dim
    }
}

impl Clone for GpuCache {
    /// A copy of the filled positions (a cache is state: a clone must not share it).
    fn clone(&self) -> GpuCache {
        let keys = self.gpu.buffer(self.spec.capacity * self.width());
        let values = self.gpu.buffer(self.spec.capacity * self.value_width());
        self.gpu.copy(&[(&self.keys, &keys)], (self.len * self.width() * 4) as u64);
        self.gpu.copy(&[(&self.values, &values)], (self.len * self.value_width() * 4) as u64);
        GpuCache { gpu: self.gpu.clone(), keys, values, spec: self.spec, len: self.len }
    }
}

impl KvStore for GpuCache {
    /// The GPU's cache keeps every position (no sliding-window ring), so any cut is possible.
    fn truncate(&mut self, len: usize) -> bool {
        self.len = self.len.min(len);
        true
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn saved_positions(&self, len: usize) -> usize {
        len
    }

    fn rows(&self) -> usize {
        self.spec.capacity
    }

    fn grow(&mut self, capacity: usize) -> Result<()> {
        if capacity <= self.spec.capacity {
            return Ok(());
        }
        let keys = self.gpu.buffer(capacity * self.width());
        let values = self.gpu.buffer(capacity * self.value_width());
        self.gpu.copy(&[(&self.keys, &keys)], (self.len * self.width() * 4) as u64);
        self.gpu.copy(&[(&self.values, &values)], (self.len * self.value_width() * 4) as u64);
        (self.keys, self.values, self.spec.capacity) = (keys, values, capacity);
        Ok(())
    }

    /// As the CPU's cache saves itself: f16, `[kv head][position][dim]`, keys then values.
    /// (Natively only: a browser cannot wait for a readback; there it saves nothing, and
    /// restoring what it saved fails.)
    fn save(&self, out: &mut Vec<u8>) {
        let read = |buffer: &wgpu::Buffer, dim: usize| -> Option<Vec<f32>> {
            let tensor = GpuTensor { rows: self.len, width: self.spec.kv_heads * dim, buffer: buffer.clone() };
            read_now(&self.gpu, &tensor).ok()
        };
        let put = |out: &mut Vec<u8>, data: &[f32], dim: usize| {
            for h in 0..self.spec.kv_heads {
                for p in 0..self.len {
                    for v in &data[(p * self.spec.kv_heads + h) * dim..][..dim] {
                        out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                    }
                }
            }
        };
        if self.len == 0 {
            return;
        }
        if let (Some(keys), Some(values)) = (read(&self.keys, self.spec.head_dim), read(&self.values, self.spec.value_dim)) {
            put(out, &keys, self.spec.head_dim);
            put(out, &values, self.spec.value_dim);
        }
    }

    fn restore(&mut self, len: usize, bytes: &[u8]) -> Option<usize> {
        if len > self.spec.capacity {
            return None;
        }
        let (heads, hd, vd) = (self.spec.kv_heads, self.spec.head_dim, self.spec.value_dim);
        let need = len * heads * (hd + vd) * 2;
        let bytes = bytes.get(..need)?;
        let unpack = |bytes: &[u8], dim: usize| -> Vec<f32> {
            let mut data = vec![0f32; len * heads * dim];
            for (i, b) in bytes.chunks_exact(2).enumerate() {
                let (h, rest) = (i / (len * dim), i % (len * dim));
                data[(rest / dim * heads + h) * dim + rest % dim] = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            data
        };
        let (k, v) = bytes.split_at(len * heads * hd * 2);
        self.gpu.queue.write_buffer(&self.keys, 0, &f32_bytes(&unpack(k, hd)));
        self.gpu.queue.write_buffer(&self.values, 0, &f32_bytes(&unpack(v, vd)));
        self.len = len;
        Some(need)
    }

    fn bytes_per_position(&self) -> usize {
        self.spec.kv_heads * (self.spec.head_dim + self.spec.value_dim) * 2
    }
}

/// Reads `x` back, waiting for the GPU: natively only.
fn read_now(gpu: &GpuHandle, x: &GpuTensor) -> Result<Vec<f32>> {
    // A browser runs the readback's callback from its event loop, which waiting here would
    // block for ever: the browser's forward pass must end in an asynchronous read.
    if cfg!(target_arch = "wasm32") {
        return Err(gpu_error("the browser's GPU cannot be read back synchronously"));
    }
    futures::executor::block_on(read_back(&gpu.device, &gpu.queue, x))
}

fn mismatch(what: &str, got: usize, expected: usize) -> Error {
    Error::Compute(format!("{what}: {got} values where {expected} were expected"))
}

fn unsupported(what: &str) -> Error {
    gpu_error(format!("{what} do not run on the GPU yet"))
}

impl Gpu {
    fn handle(&self) -> GpuHandle {
        GpuHandle { device: self.device.clone(), queue: self.queue.clone() }
    }

    /// `x op= y` element by element (see `elementwise.wgsl`).
    fn elementwise(&self, x: &GpuTensor, y: &wgpu::Buffer, op: usize, y_len: usize, by: f32) -> Result<()> {
        let total = x.len();
        self.per_value(&self.ops.elementwise, &[&x.buffer, y], &[Word::U(total), Word::U(op), Word::U(y_len.max(1)), Word::F(by)], total)
    }

    /// A copy of `x` (the operations that work in place need one where the input stays).
    fn duplicate(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let buffer = self.storage(x.len(), "activations")?;
        self.record(|encoder| encoder.copy_buffer_to_buffer(&x.buffer, 0, &buffer, 0, (x.len() * 4) as u64))?;
        Ok(GpuTensor { rows: x.rows, width: x.width, buffer })
    }

    /// The `width`-wide parts at `from_at` of each group of `from` (`from_width` wide) into
    /// those at `to_at` of each group of `to`, group g taking group g / `divide` (`copy.wgsl`).
    #[allow(clippy::too_many_arguments)]
    fn copy_parts(&self, to: &GpuTensor, to_width: usize, to_at: usize, from: &GpuTensor, from_width: usize, from_at: usize, width: usize, divide: usize) -> Result<()> {
        let total = to.len() / to_width * width;
        let params = [Word::U(total), Word::U(width), Word::U(from_width), Word::U(from_at), Word::U(divide), Word::U(to_width), Word::U(to_at), Word::U(0)];
        self.per_value(&self.ops.copy, &[&to.buffer, &from.buffer], &params, total)
    }
}

impl Backend for Gpu {
    type Tensor = GpuTensor;
    type Matrix = GpuLinear;
    type Cache = GpuCache;
    /// Short convolutions do not run on the GPU yet ([`Backend::conv_state`] refuses); the
    /// type is a cache's only to name one.
    type Conv = GpuCache;

    /// Uploads the matrix's blocks as they are, unless it is an embedding table that is only
    /// looked up ([`Products::InPlace`]): that stays on the host.
    fn matrix(&self, ggml_type: u32, bytes: Bytes, rows: usize, cols: usize, bias: Option<Vec<f32>>, products: Products) -> Result<GpuLinear> {
        let device = match products {
            Products::InPlace => None,
            Products::Batched | Products::OneRow => Some(self.matrix(ggml_type, &bytes, rows, cols)?),
        };
        let bias = match bias {
            Some(b) if b.len() != rows => return Err(mismatch("bias", b.len(), rows)),
            Some(b) => Some(std::sync::Arc::new(self.tensor(&b, 1, rows)?.buffer)),
            None => None,
        };
        Ok(GpuLinear { host: QMatrix::load(ggml_type, bytes, rows, cols, false)?, device, bias })
    }

    fn shape(&self, matrix: &GpuLinear) -> (usize, usize) {
        (matrix.host.rows(), matrix.host.cols())
    }

    fn vector(&self, values: Vec<f32>) -> Result<GpuTensor> {
        let width = values.len();
        self.tensor(&values, 1, width)
    }

    fn cache(&self, spec: &CacheSpec) -> Result<GpuCache> {
        if spec.values_in_keys {
            return Err(unsupported("latent attention's caches"));
        }
        let too_large = |_| Error::KvCacheTooLarge { positions: spec.capacity, bytes: (spec.capacity * spec.kv_heads * (spec.head_dim + spec.value_dim) * 4) as u64 };
        let keys = self.storage(spec.capacity * spec.kv_heads * spec.head_dim, "keys").map_err(too_large)?;
        let values = self.storage(spec.capacity * spec.kv_heads * spec.value_dim, "values").map_err(too_large)?;
        Ok(GpuCache { gpu: self.handle(), keys, values, spec: *spec, len: 0 })
    }

    /// On the host, as the CPU looks rows up, then uploaded.
    fn embed(&self, table: &GpuLinear, tokens: &[u32]) -> Result<GpuTensor> {
        self.tensor(&table.host.gather(tokens)?, tokens.len(), table.host.cols())
    }

    fn matmul(&self, x: &GpuTensor, w: &GpuLinear) -> Result<GpuTensor> {
        let device = w.device.as_ref().ok_or_else(|| gpu_error("a product with a matrix kept on the host"))?;
        let y = Gpu::matmul(self, x, device)?;
        if let Some(bias) = &w.bias {
            self.elementwise(&y, bias, 0, y.width, 0.0)?;
        }
        Ok(y)
    }

    fn matmul_heads(&self, _x: &GpuTensor, _heads: &[GpuLinear]) -> Result<GpuTensor> {
        Err(unsupported("latent attention's per-head products"))
    }

    fn rms_norm(&self, x: &mut GpuTensor, weight: &GpuTensor, eps: f32) -> Result<()> {
        let width = weight.len();
        if width == 0 || !x.len().is_multiple_of(width) {
            return Err(mismatch("RMS norm", x.len(), width));
        }
        let count = x.len() / width;
        let (gx, gy) = groups(count)?;
        self.dispatch(&self.ops.rms_norm, &[&x.buffer, &weight.buffer], &[Word::U(count), Word::U(width), Word::F(eps), Word::U(gx as usize)], (gx, gy, 1))
    }

    fn normed(&self, x: &GpuTensor, weight: &GpuTensor, eps: f32) -> Result<GpuTensor> {
        let mut y = self.duplicate(x)?;
        self.rms_norm(&mut y, weight, eps)?;
        Ok(y)
    }

    fn rope(&self, x: &mut GpuTensor, heads: usize, head_dim: usize, pos: usize, rope: &Rope) -> Result<()> {
        if x.len() != x.rows * heads * head_dim {
            return Err(mismatch("RoPE", x.len(), x.rows * heads * head_dim));
        }
        let half = rope.dims / 2;
        if half == 0 {
            return Ok(());
        }
        // [row][pair][cos, sin]
        let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
        let mut table = Vec::with_capacity(x.rows * half * 2);
        for row in 0..x.rows {
            rope_angles(pos + row, rope, &mut cos, &mut sin);
            table.extend(cos.iter().zip(&sin).flat_map(|(&c, &s)| [c, s]));
        }
        let table = self.tensor(&table, x.rows, half * 2)?;
        let total = x.rows * heads * half;
        let halves = usize::from(rope.style == RopeStyle::Halves);
        self.per_value(&self.ops.rope, &[&x.buffer, &table.buffer], &[Word::U(total), Word::U(heads), Word::U(head_dim), Word::U(half), Word::U(halves)], total)
    }

    fn attend(&self, q: &GpuTensor, k: &GpuTensor, v: Option<&GpuTensor>, cache: &mut GpuCache, pos: usize, spec: &Spec) -> Result<GpuTensor> {
        let v = v.ok_or_else(|| unsupported("values kept in the keys (latent attention)"))?;
        if spec.softcap.is_some() {
            return Err(unsupported("soft-capped attention scores"));
        }
        if spec.chunk.is_some() {
            return Err(unsupported("chunked attention layers"));
        }
        if spec.sinks.is_some() {
            return Err(unsupported("attention sinks"));
        }
        let (kv_heads, hd, vd) = (cache.spec.kv_heads, cache.spec.head_dim, cache.spec.value_dim);
        if pos != cache.len {
            return Err(Error::Compute(format!("attention at position {pos} of a cache of {} positions", cache.len)));
        }
        if k.len() != k.rows * kv_heads * hd || v.len() != k.rows * kv_heads * vd || q.len() != q.rows * spec.heads * hd {
            return Err(mismatch("attention", q.len(), q.rows * spec.heads * hd));
        }
        if !spec.heads.is_multiple_of(kv_heads) {
            return Err(Error::Compute(format!("{} heads over {kv_heads} key-value heads", spec.heads)));
        }
        if cache.len + k.rows > cache.spec.capacity {
            return Err(Error::PromptTooLong { tokens: cache.len + k.rows, context: cache.spec.capacity });
        }
        // Keys and values appended where the cache's positions end ([position][kv head][dim]),
        // rounded to f16 as the CPU stores them; the queries rounded to f16 as the CPU's
        // attention rounds them.
        for (from, to, row) in [(k, &cache.keys, kv_heads * hd), (v, &cache.values, kv_heads * vd)] {
            let n = from.len();
            let params = [Word::U(n), Word::U(n), Word::U(n), Word::U(0), Word::U(1), Word::U(0), Word::U(cache.len * row), Word::U(1)];
            self.per_value(&self.ops.copy, &[to, &from.buffer], &params, n)?;
        }
        cache.len += k.rows;
        let q = self.duplicate(q)?;
        self.elementwise(&q, &self.storage(1, "unused")?, 4, 1, 0.0)?;
        let count = q.rows * spec.heads;
        let scores = self.storage(count * cache.spec.capacity, "attention scores")?;
        let out = self.storage(count * vd, "attention output")?;
        let (gx, gy) = groups(count)?;
        let params = [
            Word::U(spec.heads),
            Word::U(kv_heads),
            Word::U(hd),
            Word::U(vd),
            Word::U(pos),
            Word::U(cache.len),
            Word::U(spec.window.unwrap_or(0)),
            Word::F(spec.scale),
            Word::U(cache.spec.capacity),
            Word::U(count),
            Word::U(gx as usize),
            Word::U(usize::from(spec.kernel == AttentionKernel::Flash)),
        ];
        self.dispatch(&self.ops.attend, &[&scores, &q.buffer, &cache.keys, &cache.values, &out], &params, (gx, gy, 1))?;
        Ok(GpuTensor { rows: q.rows, width: spec.heads * vd, buffer: out })
    }

    fn gated(&self, gate: GpuTensor, up: &GpuTensor, activation: Activation) -> Result<GpuTensor> {
        if gate.len() != up.len() {
            return Err(mismatch("gated activation", up.len(), gate.len()));
        }
        let op = match activation {
            Activation::Silu => 2,
            Activation::GeluTanh => 3,
            Activation::SwigluOai => return Err(unsupported("gpt-oss's clamped SwiGLU")),
        };
        self.elementwise(&gate, &up.buffer, op, up.len(), 0.0)?;
        Ok(gate)
    }

    fn conv_state(&self, _width: usize, _kernel: usize, _capacity: usize) -> Result<GpuCache> {
        Err(unsupported("short convolutions (LFM2)"))
    }

    fn short_conv(&self, _bcx: &GpuTensor, _weights: &GpuTensor, _state: &mut GpuCache) -> Result<GpuTensor> {
        Err(unsupported("short convolutions (LFM2)"))
    }

    fn soft_cap(&self, _x: &mut GpuTensor, _cap: f32) -> Result<()> {
        Err(unsupported("soft-capped logits"))
    }

    fn scale_rows(&self, _x: &mut GpuTensor, _width: usize, _by: &dyn Fn(usize) -> f32) -> Result<()> {
        Err(unsupported("per-position scales (attention temperature)"))
    }

    fn add(&self, x: &mut GpuTensor, y: &GpuTensor) -> Result<()> {
        if x.len() != y.len() {
            return Err(mismatch("residual", y.len(), x.len()));
        }
        self.elementwise(x, &y.buffer, 0, y.len(), 0.0)
    }

    fn scale(&self, x: &mut GpuTensor, by: f32) -> Result<()> {
        // The second binding is read by no thread of this operation; any buffer but x fills it.
        self.elementwise(x, &self.storage(1, "unused")?, 1, 1, by)
    }

    fn split(&self, x: &GpuTensor, widths: &[usize]) -> Result<Vec<GpuTensor>> {
        let group: usize = widths.iter().sum();
        if group == 0 || !x.len().is_multiple_of(group) {
            return Err(mismatch("split", x.len(), group));
        }
        let groups = x.len() / group;
        let mut parts = Vec::with_capacity(widths.len());
        let mut at = 0;
        for &w in widths {
            let part = GpuTensor { rows: x.rows, width: groups * w / x.rows.max(1), buffer: self.storage(groups * w, "a split's part")? };
            if w > 0 {
                self.copy_parts(&part, w, 0, x, group, at, w, 1)?;
            }
            parts.push(part);
            at += w;
        }
        Ok(parts)
    }

    fn join(&self, a: &GpuTensor, a_width: usize, b: &GpuTensor, b_width: usize, repeat_b: usize) -> Result<GpuTensor> {
        let groups = a.len() / a_width.max(1);
        if a_width == 0 || !a.len().is_multiple_of(a_width) || repeat_b == 0 || b.len() != groups.div_ceil(repeat_b) * b_width {
            return Err(mismatch("join", b.len(), groups.div_ceil(repeat_b.max(1)) * b_width));
        }
        let width = a_width + b_width;
        let out = GpuTensor { rows: a.rows, width: groups * width / a.rows.max(1), buffer: self.storage(groups * width, "a join")? };
        self.copy_parts(&out, width, 0, a, a_width, 0, a_width, 1)?;
        if b_width > 0 {
            self.copy_parts(&out, width, a_width, b, b_width, 0, b_width, repeat_b)?;
        }
        Ok(out)
    }

    fn experts(&self, _x: &GpuTensor, _moe: &Moe<Gpu>, _spec: &Experts, _activation: Activation) -> Result<GpuTensor> {
        Err(unsupported("mixtures of experts"))
    }

    fn tail(&self, x: GpuTensor, from: usize) -> Result<GpuTensor> {
        if from > x.rows {
            return Err(Error::Compute(format!("rows from {from} of {}", x.rows)));
        }
        if from == 0 {
            return Ok(x);
        }
        let rows = x.rows - from;
        let buffer = self.storage(rows * x.width, "rows")?;
        let row = (x.width * 4) as u64;
        self.record(|encoder| encoder.copy_buffer_to_buffer(&x.buffer, from as u64 * row, &buffer, 0, rows as u64 * row))?;
        Ok(GpuTensor { rows, width: x.width, buffer })
    }

    /// Submits everything recorded since the last read, and waits for `x` (natively; a
    /// browser needs [`Gpu::read`], asynchronous).
    fn read(&self, x: &GpuTensor) -> Result<Vec<f32>> {
        self.submit()?;
        read_now(&self.handle(), x)
    }
}

#[cfg(test)]
mod tests {
    //! Each operation against the CPU backend's, on random values: bit for bit (every
    //! value's bits the CPU's), but for attention without flash attention, whose GPU form
    //! sums in another order than the CPU's (llama.cpp's tiled f16 products and its vectorised
    //! exponential) and is held to 2e-3 of the largest value: its probabilities are rounded to
    //! f16 (2⁻¹¹ relative), so a last-bit difference before that rounding moves a probability
    //! by up to 2⁻¹¹. The decoder runs that form only where the value width differs from the
    //! key width (none of the models the GPU runs today).
    use super::*;
    use crate::backend::Cpu;

    fn gpu() -> Gpu {
        futures::executor::block_on(Gpu::new()).unwrap_or_else(|e| panic!("{e} (natively the GPU tests need a Vulkan driver: `apt-get install mesa-vulkan-drivers`)"))
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut next = crate::xorshift(seed | 1);
        (0..n).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect()
    }

    fn both(gpu: &Gpu, values: &[f32], rows: usize) -> (crate::backend::cpu::Tensor, GpuTensor) {
        (crate::backend::cpu::Tensor { rows, data: values.to_vec() }, gpu.tensor(values, rows, values.len() / rows).unwrap())
    }

    /// max |gpu − cpu| / max |cpu|, and fails above `tolerance`; with a tolerance of 0, fails
    /// unless every value has the CPU's bits.
    fn close(what: &str, gpu: &Gpu, cpu: &[f32], x: &GpuTensor, tolerance: f32) {
        let got = Backend::read(gpu, x).unwrap();
        assert_eq!(got.len(), cpu.len(), "{what}: length");
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let worst = got.iter().zip(cpu).map(|(g, c)| (g - c).abs()).fold(0f32, f32::max) / scale;
        let same = got.iter().zip(cpu).filter(|(g, c)| g.to_bits() == c.to_bits()).count();
        eprintln!("{what}: {same}/{} bit-identical; max |gpu − cpu| = {worst:.2e} of max |cpu|", cpu.len());
        if tolerance == 0.0 {
            assert_eq!(same, cpu.len(), "{what}: {} values of {} differ from the CPU's bits", cpu.len() - same, cpu.len());
        }
        assert!(worst <= tolerance, "{what}: the GPU differs from the CPU by {worst:.2e} of the largest value (allowed {tolerance:.0e})");
    }

    #[test]
    fn operations_match_the_cpu_backend() {
        let (gpu, cpu) = (gpu(), Cpu::default());
        let (rows, heads, kv_heads, head_dim) = (5, 6, 2, 64);
        let width = heads * head_dim;

        let x = random(rows * width, 1);
        let weight = random(width, 2);
        let (mut c, mut g) = both(&gpu, &x, rows);
        let (cw, gw) = (cpu.vector(weight.clone()).unwrap(), gpu.vector(weight).unwrap());
        cpu.rms_norm(&mut c, &cw, 1e-5).unwrap();
        gpu.rms_norm(&mut g, &gw, 1e-5).unwrap();
        close("rms_norm", &gpu, &c.data, &g, 0.0);

        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            let rope = Rope { dims: head_dim, base: 10000.0, style, yarn: None, factors: None, mscale: 1.0 };
            let (mut c, mut g) = both(&gpu, &x, rows);
            cpu.rope(&mut c, heads, head_dim, 37, &rope).unwrap();
            gpu.rope(&mut g, heads, head_dim, 37, &rope).unwrap();
            close(&format!("rope {style:?}"), &gpu, &c.data, &g, 0.0);
        }

        let up = random(rows * width, 3);
        for activation in [Activation::Silu, Activation::GeluTanh] {
            let (c, g) = both(&gpu, &x, rows);
            let (cu, gu) = both(&gpu, &up, rows);
            let c = cpu.gated(c, &cu, activation).unwrap();
            let g = gpu.gated(g, &gu, activation).unwrap();
            close(&format!("gated {activation:?}"), &gpu, &c.data, &g, 0.0);
        }

        let (mut c, mut g) = both(&gpu, &x, rows);
        let (cu, gu) = both(&gpu, &up, rows);
        cpu.add(&mut c, &cu).unwrap();
        gpu.add(&mut g, &gu).unwrap();
        cpu.scale(&mut c, 0.125).unwrap();
        gpu.scale(&mut g, 0.125).unwrap();
        close("add, scale", &gpu, &c.data, &g, 0.0);

        let (c, g) = both(&gpu, &x, rows);
        let cp = cpu.split(&c, &[64, 32, 32]).unwrap();
        let gp = gpu.split(&g, &[64, 32, 32]).unwrap();
        for (i, (c, g)) in cp.iter().zip(&gp).enumerate() {
            close(&format!("split part {i}"), &gpu, &c.data, g, 0.0);
        }
        let cj = cpu.join(&cp[1], 32, &cp[2], 32, 3).unwrap_or_else(|_| cpu.join(&cp[1], 32, &cp[0], 64, 1).unwrap());
        let gj = gpu.join(&gp[1], 32, &gp[2], 32, 3).unwrap_or_else(|_| gpu.join(&gp[1], 32, &gp[0], 64, 1).unwrap());
        close("join", &gpu, &cj.data, &gj, 0.0);
        let (c, g) = both(&gpu, &x, rows);
        close("tail", &gpu, &cpu.tail(c, 3).unwrap().data, &gpu.tail(g, 3).unwrap(), 0.0);

        // Attention: a prompt of `rows` positions after 7 filled ones, then one more position.
        for kernel in [AttentionKernel::Flash, AttentionKernel::Unfused] {
            let spec = CacheSpec { kv_heads, capacity: 32, head_dim, value_dim: head_dim, values_in_keys: false, window: None };
            let (mut cc, mut gc) = (cpu.cache(&spec).unwrap(), gpu.cache(&spec).unwrap());
            let attention = Spec { heads, scale: 0.125, softcap: None, window: None, chunk: None, sinks: None, kernel };
            let mut pos = 0;
            for (step, n) in [7, rows, 1].into_iter().enumerate() {
                let seed = 10 + step as u64 * 3;
                let (q, k, v) = (random(n * width, seed), random(n * kv_heads * head_dim, seed + 1), random(n * kv_heads * head_dim, seed + 2));
                let ((cq, gq), (ck, gk), (cv, gv)) = (both(&gpu, &q, n), both(&gpu, &k, n), both(&gpu, &v, n));
                let c = cpu.attend(&cq, &ck, Some(&cv), &mut cc, pos, &attention).unwrap();
                let g = gpu.attend(&gq, &gk, Some(&gv), &mut gc, pos, &attention).unwrap();
                close(&format!("attend {kernel:?} {n} at {pos}"), &gpu, &c.data, &g, if kernel == AttentionKernel::Flash { 0.0 } else { 2e-3 });
                pos += n;
            }
        }
    }

    /// `exact.wgsl` on many random inputs against the CPU's fused multiply-add and e^x: bit
    /// for bit, the WGSL `fma` and `exp` counted beside them for comparison.
    #[test]
    fn exact_arithmetic_matches_the_cpu() {
        use wgpu::util::DeviceExt;
        let gpu = gpu();
        let n = 200_000usize;
        let mut next = crate::xorshift(7);
        // Values of mixed magnitudes and signs: x · 2^e for e in −12..12; products that cancel
        // their addend often (c near −a·b), exponentials over the softmax's and SiLU's range.
        let mut value = || {
            let m = (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            m * 2f32.powi((next() % 24) as i32 - 12)
        };
        let (a, b): (Vec<f32>, Vec<f32>) = ((0..n).map(|_| value()).collect(), (0..n).map(|_| value()).collect());
        let c: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { -(a[i] * b[i]) * (1.0 + value() * 1e-3) } else { value() }).collect();
        let x: Vec<f32> = (0..n).map(|i| (a[i] * 4.0).clamp(-100.0, 80.0) + if i % 2 == 0 { 0.0 } else { -50.0 * (i % 7) as f32 / 7.0 }).collect();
        let source = format!(
            "{}\n{}",
            include_str!("wgsl/exact.wgsl"),
            r#"
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> c: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = arrayLength(&a);
    set_opaque_zero(n, 0u);
    let i = id.x + id.y * 65536u;
    if (i >= n) { return; }
    o[i] = fma_exact(a[i], b[i], c[i]);
    o[n + i] = fma(a[i], b[i], c[i]);
    o[2u * n + i] = exp_exact(x[i]);
    o[3u * n + i] = exp(x[i]);
}"#
        );
        let device = &gpu.device;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: None, source: wgpu::ShaderSource::Wgsl(source.into()) });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let input = |v: &[f32]| device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: &f32_bytes(v), usage: wgpu::BufferUsages::STORAGE });
        let inputs = [input(&a), input(&b), input(&c), input(&x)];
        let out = gpu.storage(4 * n, "results").unwrap();
        let mut entries: Vec<_> = inputs.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() }).collect();
        entries.push(wgpu::BindGroupEntry { binding: 4, resource: out.as_entire_binding() });
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipeline.get_bind_group_layout(0), entries: &entries });
        gpu.record(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(1024, n.div_ceil(65536) as u32, 1);
        })
        .unwrap();
        let o = Backend::read(&gpu, &GpuTensor { rows: 1, width: 4 * n, buffer: out }).unwrap();
        let differ = |k: usize, f: &dyn Fn(usize) -> f32| (0..n).filter(|&i| o[k * n + i].to_bits() != f(i).to_bits()).count();
        let fused = |i: usize| crate::arch::math::fma(a[i], b[i], c[i]);
        let exp = |i: usize| crate::arch::math::exp(x[i]);
        let (fma_exact, fma_wgsl, exp_exact, exp_wgsl) = (differ(0, &fused), differ(1, &fused), differ(2, &exp), differ(3, &exp));
        eprintln!("of {n} on {}: fma_exact {fma_exact} differ from the CPU's fma (WGSL's fma {fma_wgsl}); exp_exact {exp_exact} from the CPU's exp (WGSL's exp {exp_wgsl})", gpu.adapter_name());
        assert_eq!(fma_exact, 0, "fma_exact is not the CPU's fused multiply-add");
        assert_eq!(exp_exact, 0, "exp_exact is not the CPU's e^x");
    }
}
