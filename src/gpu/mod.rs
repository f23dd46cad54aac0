//! The GPU: weights uploaded as their GGUF blocks and multiplied in WGSL, through wgpu (the
//! browser's WebGPU in wasm32, Vulkan natively). Target-neutral: wgpu picks the backend, and
//! the only asynchronous step that differs, waiting for a readback, is `Device::poll` natively
//! and the browser's event loop in wasm (where `poll` does nothing).
//!
//! # The CPU's arithmetic
//!
//! llama.cpp's CPU code quantizes each activation row to 8 bits per block before a product
//! (Q8_0, Q8_1 or Q8_K: the weight format's `vec_dot_type`, [`crate::kernels::blocks`]) and
//! sums each block's 8-bit products as an exact integer; its Metal and WebGPU backends multiply
//! by the f32 activations instead. This backend does what the CPU does: a pass
//! (`quantize.wgsl`) quantizes the activations as the CPU does, and the products
//! (`matvec.wgsl` and a file per format) sum each block's products in i32, scale them in f32 as
//! the CPU does, and add the blocks' terms in the CPU's order. A product is then the CPU's to
//! the bit, or within an ulp or two where the shader compiler fuses a multiply and an add
//! ([`check`] states the tolerances and counts the bit-identical values). With f32
//! activations instead, each product differed from the CPU's by the CPU's activation rounding
//! (some 5e-4 of Σ|w·x|), and SmolLM2's logits by up to 1.2 after thirty layers.
//!
//! The decoder's other operations follow the CPU's where it rounds: keys and values are stored
//! rounded to f16, queries rounded to f16 before attention, and flash attention's online
//! softmax runs over the keys in order with the value accumulator rounded to f16.

mod backend;
pub mod check;

pub use backend::{GpuCache, GpuLinear, GpuWeights};

use std::sync::Mutex;

use wgpu::util::DeviceExt;

use crate::kernels::blocks::ActFormat;
use crate::kernels::Format;
use crate::error::{Error, Result};

/// The formats the GPU multiplies (`gpu/wgsl/<format>.wgsl` each).
pub const GPU_FORMATS: [Format; 8] =
    [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q5_1, Format::Q8_0, Format::Q4K, Format::Q5K, Format::Q6K];

/// Workgroups a dispatch may have along one dimension (WebGPU's default limit).
const MAX_GROUPS: u32 = 65_535;

/// The WGSL of a format's block (`BLOCK_BYTES`, `BLOCK_LEN`, `block_term`), or `None` where the GPU
/// has no kernel for it.
fn format_source(format: Format) -> Option<String> {
    let (kquants, nibbles) = (include_str!("wgsl/kquants.wgsl"), include_str!("wgsl/nibbles.wgsl"));
    Some(match format {
        Format::Q4_0 => format!("{nibbles}\n{}", include_str!("wgsl/q4_0.wgsl")),
        Format::Q4_1 => format!("{nibbles}\n{}", include_str!("wgsl/q4_1.wgsl")),
        Format::Q5_0 => format!("{nibbles}\n{}", include_str!("wgsl/q5_0.wgsl")),
        Format::Q5_1 => format!("{nibbles}\n{}", include_str!("wgsl/q5_1.wgsl")),
        Format::Q8_0 => include_str!("wgsl/q8_0.wgsl").to_string(),
        Format::Q4K => format!("{kquants}\n{}", include_str!("wgsl/q4_k.wgsl")),
        Format::Q5K => format!("{kquants}\n{}", include_str!("wgsl/q5_k.wgsl")),
        Format::Q6K => include_str!("wgsl/q6_k.wgsl").to_string(),
        _ => return None,
    })
}

/// A GPU device with the pipelines of the products and the other operations.
///
/// Operations are recorded into one command encoder (`pending`) as they are called, and
/// submitted together by [`Gpu::read`]: a forward pass is one submission.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: wgpu::AdapterInfo,
    /// The product's pipeline for each of [`GPU_FORMATS`].
    matvec: Vec<(Format, wgpu::ComputePipeline)>,
    ops: Ops,
    pending: Mutex<Option<wgpu::CommandEncoder>>,
    /// Why the device was lost, once it was (set by wgpu's device-lost callback).
    lost: std::sync::Arc<Mutex<Option<String>>>,
}

/// Storage buffers the busiest pipeline binds (`attend.wgsl`: scores, queries, keys, values,
/// output); an adapter must allow this many per shader stage (WebGPU's minimum is 8).
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 5;

/// The pipelines of the operations other than products (`gpu/wgsl/<name>.wgsl`).
struct Ops {
    rms_norm: wgpu::ComputePipeline,
    rope: wgpu::ComputePipeline,
    elementwise: wgpu::ComputePipeline,
    copy: wgpu::ComputePipeline,
    attend: wgpu::ComputePipeline,
    quantize: wgpu::ComputePipeline,
}

/// A weight matrix on the GPU: its GGUF blocks, row after row, as they are in the file, in
/// parts of whole rows that each fit in a storage buffer binding.
#[derive(Clone)]
pub struct GpuMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// (first row, rows, buffer) of each part.
    parts: Vec<(usize, usize, wgpu::Buffer)>,
}

/// Activations on the GPU: `rows × width` f32 values.
pub struct GpuTensor {
    rows: usize,
    width: usize,
    buffer: wgpu::Buffer,
}

impl GpuTensor {
    /// (rows, width).
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.width)
    }

    fn len(&self) -> usize {
        self.rows * self.width
    }
}

impl GpuMatrix {
    /// (rows, cols).
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

fn gpu_error(what: impl std::fmt::Display) -> Error {
    Error::Gpu(what.to_string())
}

/// Workgroups (x, y) for `n` workgroups: a dimension holds at most [`MAX_GROUPS`].
fn groups(n: usize) -> Result<(u32, u32)> {
    let x = n.clamp(1, MAX_GROUPS as usize);
    let y = n.div_ceil(x).max(1);
    if y > MAX_GROUPS as usize {
        return Err(gpu_error(format!("{n} workgroups are more than one dispatch holds")));
    }
    Ok((x as u32, y as u32))
}

/// A uniform buffer's words: u32s, and f32s by their bits.
#[derive(Clone, Copy)]
enum Word {
    U(usize),
    F(f32),
}

impl Gpu {
    /// The first adapter wgpu finds (the browser's `navigator.gpu` in wasm32, a Vulkan device
    /// natively), with its own limits, and the pipelines compiled.
    ///
    /// # Errors
    /// [`Error::Gpu`] when there is no adapter or the device is refused.
    pub async fn new() -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| gpu_error(format!("no GPU adapter ({e}); in a browser, WebGPU needs a secure context (https or localhost) and a browser that enables it")))?;
        // The adapter's own limits, not WebGPU's defaults: the largest storage buffers it has
        // (a vocabulary's embedding table is over WebGPU's default 128 MiB binding).
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("candlewick"),
                required_features: wgpu::Features::empty(),
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| gpu_error(format!("the GPU adapter refused a device: {e}")))?;
        let pipeline = |name: &str, source: String| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(source.into()) });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let (f16, exact) = (include_str!("wgsl/f16.wgsl"), include_str!("wgsl/exact.wgsl"));
        let mut matvec = Vec::new();
        for format in GPU_FORMATS {
            let Some(block) = format_source(format) else { continue };
            matvec.push((format, pipeline(&format!("matvec {format:?}"), format!("{exact}\n{block}\n{}", include_str!("wgsl/matvec.wgsl")))));
        }
        let ops = Ops {
            rms_norm: pipeline("rms_norm", format!("{exact}\n{}", include_str!("wgsl/rms_norm.wgsl"))),
            rope: pipeline("rope", format!("{exact}\n{}", include_str!("wgsl/rope.wgsl"))),
            elementwise: pipeline("elementwise", format!("{f16}\n{exact}\n{}", include_str!("wgsl/elementwise.wgsl"))),
            copy: pipeline("copy", format!("{f16}\n{}", include_str!("wgsl/copy.wgsl"))),
            attend: pipeline("attend", format!("{f16}\n{exact}\n{}", include_str!("wgsl/attend.wgsl"))),
            quantize: pipeline("quantize", format!("{f16}\n{exact}\n{}", include_str!("wgsl/quantize.wgsl"))),
        };
        let lost = std::sync::Arc::new(Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut lost) = flag.lock() {
                *lost = Some(format!("{reason:?}{}", if message.is_empty() { String::new() } else { format!(": {message}") }));
            }
        });
        Ok(Gpu { device, queue, adapter: adapter.get_info(), matvec, ops, pending: Mutex::new(None), lost })
    }

    /// The adapter's name and backend, e.g. `"llvmpipe (llvm 15.0.6, 256 bits) (vulkan)"`.
    pub fn adapter_name(&self) -> String {
        let info = &self.adapter;
        let name = if info.name.is_empty() { format!("{} {}", info.vendor, info.device) } else { info.name.clone() };
        format!("{name} ({:?})", info.backend).to_lowercase()
    }

    /// The device's limits (the adapter's own: [`Gpu::new`] asks for all of them).
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// Why the device was lost (`"Destroyed"`, `"Unknown: …"`), or `None` while it works.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|lost| lost.clone())
    }

    /// Uploads a matrix of ggml type `ggml_type` from its GGUF bytes (`rows` rows of `cols`
    /// values), as they are.
    ///
    /// # Errors
    /// [`Error::Gpu`] when the GPU has no kernel for the type or a row is larger than the
    /// device's largest storage buffer; [`Error::Compute`] when the bytes do not fit the shape.
    pub fn matrix(&self, ggml_type: u32, bytes: &[u8], rows: usize, cols: usize) -> Result<GpuMatrix> {
        let format = Format::from_ggml(ggml_type).ok_or_else(|| Error::Compute(format!("unknown ggml type {ggml_type}")))?;
        self.upload(format, bytes, rows, cols)
    }

    /// [`Gpu::matrix`] for a format.
    fn upload(&self, format: Format, bytes: &[u8], rows: usize, cols: usize) -> Result<GpuMatrix> {
        self.pipeline(format)?;
        let (block_len, block_bytes) = format.block();
        if cols == 0 || !cols.is_multiple_of(block_len) {
            return Err(Error::Compute(format!("{cols} columns are not whole {format:?} blocks")));
        }
        let row_bytes = cols / block_len * block_bytes;
        if rows == 0 || rows.checked_mul(row_bytes) != Some(bytes.len()) {
            return Err(Error::Compute(format!("{} bytes are not {rows} rows of {row_bytes}", bytes.len())));
        }
        // Parts of as many rows as a binding holds, each padded to whole words (the shader
        // reads u32s) plus one word, so the byte readers never look past the buffer.
        let per_part = (self.binding_limit().saturating_sub(8) / row_bytes as u64) as usize;
        if per_part == 0 {
            return Err(gpu_error(format!("a row of {row_bytes} bytes is larger than the largest storage buffer of {}", self.adapter_name())));
        }
        let mut parts = Vec::new();
        for first in (0..rows).step_by(per_part) {
            let n = per_part.min(rows - first);
            let part = &bytes[first * row_bytes..(first + n) * row_bytes];
            let mut data = Vec::with_capacity((part.len() + 4).next_multiple_of(4));
            data.extend_from_slice(part);
            data.resize((part.len() + 4).next_multiple_of(4), 0);
            let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("weights"), contents: &data, usage: wgpu::BufferUsages::STORAGE });
            parts.push((first, n, buffer));
        }
        Ok(GpuMatrix { format, rows, cols, row_bytes, parts })
    }

    /// Uploads `rows × width` activations.
    ///
    /// # Errors
    /// [`Error::Gpu`] when `values` is not `rows × width` long or too large for the device.
    pub fn tensor(&self, values: &[f32], rows: usize, width: usize) -> Result<GpuTensor> {
        if rows.checked_mul(width) != Some(values.len()) || values.is_empty() {
            return Err(gpu_error(format!("{} values are not {rows} rows of {width}", values.len())));
        }
        let buffer = self.storage(values.len(), "activations")?;
        self.queue.write_buffer(&buffer, 0, &f32_bytes(values));
        Ok(GpuTensor { rows, width, buffer })
    }

    /// The largest storage buffer binding, in bytes.
    fn binding_limit(&self) -> u64 {
        let limits = self.device.limits();
        limits.max_storage_buffer_binding_size.min(limits.max_buffer_size)
    }

    /// A storage buffer of `values` f32s (at least one), uninitialized by us (zeros by WebGPU).
    fn storage(&self, values: usize, what: &str) -> Result<wgpu::Buffer> {
        let bytes = values.max(1) as u64 * 4;
        let limit = self.binding_limit();
        if bytes > limit {
            return Err(gpu_error(format!(
                "{what} of {:.1} MiB is larger than the largest storage buffer of {} ({:.1} MiB)",
                bytes as f64 / 1048576.0,
                self.adapter_name(),
                limit as f64 / 1048576.0
            )));
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// The product's pipeline for `format`.
    fn pipeline(&self, format: Format) -> Result<&wgpu::ComputePipeline> {
        self.matvec
            .iter()
            .find(|(f, _)| *f == format)
            .map(|(_, pipeline)| pipeline)
            .ok_or_else(|| gpu_error(format!("no GPU kernel for {format:?} weights")))
    }

    /// Runs `f` on the pending command encoder (a new one when none is pending).
    fn record<T>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> T) -> Result<T> {
        let mut pending = self.pending.lock().map_err(|_| gpu_error("a previous GPU operation panicked"))?;
        let encoder = pending.get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("candlewick") }));
        Ok(f(encoder))
    }

    /// Records a dispatch of `pipeline` over `groups` workgroups, its bindings `buffers` (in
    /// binding order) and then a uniform buffer of `params`.
    fn dispatch(&self, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer], params: &[Word], groups: (u32, u32, u32)) -> Result<()> {
        let mut words: Vec<u8> = params
            .iter()
            .flat_map(|w| match *w {
                Word::U(v) => (v as u32).to_le_bytes(),
                Word::F(v) => v.to_le_bytes(),
            })
            .collect();
        words.resize(words.len().next_multiple_of(16).max(16), 0);
        let params = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("params"), contents: &words, usage: wgpu::BufferUsages::UNIFORM });
        let mut entries: Vec<wgpu::BindGroupEntry> =
            buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() }).collect();
        entries.push(wgpu::BindGroupEntry { binding: buffers.len() as u32, resource: params.as_entire_binding() });
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipeline.get_bind_group_layout(0), entries: &entries });
        self.record(|encoder| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        })
    }

    /// Records an operation of one thread per value (`total` of them, 64 to a workgroup):
    /// `params` are followed by the row stride of the dispatch.
    fn per_value(&self, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer], params: &[Word], total: usize) -> Result<()> {
        let (x, y) = groups(total.div_ceil(64))?;
        let mut params = params.to_vec();
        params.push(Word::U(x as usize * 64));
        self.dispatch(pipeline, buffers, &params, (x, y, 1))
    }

    /// `x · Wᵀ`: each of `x`'s rows multiplied by the matrix, `x.rows × w.rows` values.
    ///
    /// # Errors
    /// [`Error::Gpu`] when the shapes do not fit or the batch is larger than a dispatch.
    pub fn matmul(&self, x: &GpuTensor, w: &GpuMatrix) -> Result<GpuTensor> {
        if x.width != w.cols {
            return Err(gpu_error(format!("activations {} wide for a matrix of {} columns", x.width, w.cols)));
        }
        if x.rows > MAX_GROUPS as usize {
            return Err(gpu_error(format!("a product of {} rows is larger than one dispatch", x.rows)));
        }
        let pipeline = self.pipeline(w.format)?;
        // The activations as the CPU quantizes them for this format: 8-bit values and scales.
        let (kind, block) = match w.format.act() {
            ActFormat::Q8_0 | ActFormat::Q8_1 => (0, 32),
            ActFormat::Q8K => (1, 256),
            other => return Err(gpu_error(format!("no GPU quantizer for {other:?} activations"))),
        };
        let blocks = x.len() / block;
        let xq = self.storage(x.len(), "quantized activations")?;
        let xs = self.storage(blocks * 2, "activation scales")?;
        self.per_value(&self.ops.quantize, &[&xq, &xs, &x.buffer], &[Word::U(blocks), Word::U(kind)], blocks)?;
        let out = self.storage(x.rows * w.rows, "a product's result")?;
        for (first, rows, buffer) in &w.parts {
            let (gx, gy) = groups(rows.div_ceil(64))?;
            let params = [Word::U(*rows), Word::U(w.cols), Word::U(w.row_bytes), Word::U(gx as usize), Word::U(*first), Word::U(w.rows)];
            self.dispatch(pipeline, &[buffer, &xq, &xs, &out], &params, (gx, gy, x.rows as u32))?;
        }
        Ok(GpuTensor { rows: x.rows, width: w.rows, buffer: out })
    }

    /// Submits what was recorded, and reads `x` back once the GPU is done.
    ///
    /// # Errors
    /// [`Error::Gpu`] when the readback fails (a lost device).
    pub async fn read(&self, x: &GpuTensor) -> Result<Vec<f32>> {
        self.submit()?;
        read_back(&self.device, &self.queue, x).await
    }

    /// Submits what was recorded.
    fn submit(&self) -> Result<()> {
        let encoder = self.pending.lock().map_err(|_| gpu_error("a previous GPU operation panicked"))?.take();
        if let Some(encoder) = encoder {
            self.queue.submit([encoder.finish()]);
        }
        Ok(())
    }
}

/// Copies `x` into a buffer the host can map, submits the copy, and reads it once the GPU is
/// done with everything submitted before.
async fn read_back(device: &wgpu::Device, queue: &wgpu::Queue, x: &GpuTensor) -> Result<Vec<f32>> {
    let size = (x.len() * 4) as u64;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
    encoder.copy_buffer_to_buffer(&x.buffer, 0, &staging, 0, size);
    queue.submit([encoder.finish()]);
    let (sender, receiver) = futures::channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |result| {
        let _ = sender.send(result);
    });
    // Natively this waits for the GPU and runs the callback; in the browser it returns at once
    // and the callback comes from the event loop.
    device.poll(wgpu::PollType::wait_indefinitely()).map_err(gpu_error)?;
    receiver
        .await
        .map_err(|_| gpu_error("the GPU dropped a readback (device lost?)"))?
        .map_err(|e| gpu_error(format!("reading a result back failed: {e}")))?;
    let values = {
        let view = staging.get_mapped_range(..).map_err(gpu_error)?;
        view.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    staging.unmap();
    Ok(values)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
