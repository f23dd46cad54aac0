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
        // An Arc, not an Rc: natively the matrices cross threads. In wasm32 wgpu's buffers are
        // not Send (the browser's objects stay on their thread), so the Arc buys nothing there.
        #[allow(clippy::arc_with_non_send_sync)]
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
