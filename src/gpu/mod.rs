//! The GPU: weights uploaded as their GGUF blocks and multiplied in WGSL, through wgpu (the
//! browser's WebGPU in wasm32, Vulkan natively). Target-neutral: wgpu picks the backend, and
//! the only asynchronous step that differs, waiting for a readback, is `Device::poll` natively
//! and the browser's event loop in wasm (where `poll` does nothing).
//!
//! # Activations are f32
//!
//! llama.cpp's CPU code quantizes each activation row to 8 bits per block before a product
//! (Q8_0, Q8_1 or Q8_K, [`crate::kernels::blocks`]); its Metal and WebGPU backends do not, and
//! neither does this one: the shaders dequantize the weights and multiply them by the f32
//! activations. The products are then closer to the exact ones than the CPU's, and they differ
//! from the CPU kernel by the CPU's own activation rounding, `Σ w·(x̂ − x)` (x̂ the quantized
//! activations), which is what [`check`] allows them to differ by, computed per row. Replaying
//! the CPU's quantizer on the GPU would not make the two bit-identical either: WGSL's division
//! may be off by 2.5 ulp, so an activation on a rounding boundary could round the other way.
//! Greedy decoding then agrees except at near-ties (DESIGN decision 4), as llama.cpp's own GPU
//! backends agree with its CPU backend.

pub mod check;

use wgpu::util::DeviceExt;

use crate::kernels::Format;
use crate::error::{Error, Result};

/// The formats the GPU multiplies (`gpu/wgsl/<format>.wgsl` each).
pub const GPU_FORMATS: [Format; 8] =
    [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q5_1, Format::Q8_0, Format::Q4K, Format::Q5K, Format::Q6K];

/// Workgroups a dispatch may have along one dimension (WebGPU's default limit).
const MAX_GROUPS: u32 = 65_535;

/// The WGSL of a format's block (`UNITS`, `BLOCK_BYTES`, `unit_dot`), or `None` where the GPU
/// has no kernel for it.
fn format_source(format: Format) -> Option<String> {
    let kquants = include_str!("wgsl/kquants.wgsl");
    Some(match format {
        Format::Q4_0 => include_str!("wgsl/q4_0.wgsl").to_string(),
        Format::Q4_1 => include_str!("wgsl/q4_1.wgsl").to_string(),
        Format::Q5_0 => include_str!("wgsl/q5_0.wgsl").to_string(),
        Format::Q5_1 => include_str!("wgsl/q5_1.wgsl").to_string(),
        Format::Q8_0 => include_str!("wgsl/q8_0.wgsl").to_string(),
        Format::Q4K => format!("{kquants}\n{}", include_str!("wgsl/q4_k.wgsl")),
        Format::Q5K => format!("{kquants}\n{}", include_str!("wgsl/q5_k.wgsl")),
        Format::Q6K => include_str!("wgsl/q6_k.wgsl").to_string(),
        _ => return None,
    })
}

/// A GPU device with the pipelines of the products.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: wgpu::AdapterInfo,
    layout: wgpu::BindGroupLayout,
    /// The product's pipeline for each of [`GPU_FORMATS`].
    matvec: Vec<(Format, wgpu::ComputePipeline)>,
}

/// A weight matrix on the GPU: its GGUF blocks, row after row, as they are in the file.
pub struct GpuMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    buffer: wgpu::Buffer,
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
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("matvec"),
            entries: &[
                storage(0, true),
                storage(1, true),
                storage(2, false),
                wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("matvec"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let mut matvec = Vec::new();
        for format in GPU_FORMATS {
            let Some(block) = format_source(format) else { continue };
            let source = format!("{block}\n{}", include_str!("wgsl/matvec.wgsl"));
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&format!("matvec {format:?}")),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&format!("matvec {format:?}")),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            matvec.push((format, pipeline));
        }
        Ok(Gpu { device, queue, adapter: adapter.get_info(), layout, matvec })
    }

    /// The adapter's name and backend, e.g. `"SwiftShader Device (Subzero) (vulkan)"`.
    pub fn adapter_name(&self) -> String {
        let info = &self.adapter;
        let name = if info.name.is_empty() { format!("{} {}", info.vendor, info.device) } else { info.name.clone() };
        format!("{name} ({:?})", info.backend).to_lowercase()
    }

    /// Uploads a matrix of ggml type `ggml_type` from its GGUF bytes (`rows` rows of `cols`
    /// values), as they are.
    ///
    /// # Errors
    /// [`Error::Gpu`] when the GPU has no kernel for the type or the matrix is larger than the
    /// device's largest storage buffer; [`Error::Compute`] when the bytes do not fit the shape.
    pub fn matrix(&self, ggml_type: u32, bytes: &[u8], rows: usize, cols: usize) -> Result<GpuMatrix> {
        let format = Format::from_ggml(ggml_type).ok_or_else(|| Error::Compute(format!("unknown ggml type {ggml_type}")))?;
        self.upload(format, bytes, rows, cols)
    }

    /// [`Gpu::matrix`] for a format.
    fn upload(&self, format: Format, bytes: &[u8], rows: usize, cols: usize) -> Result<GpuMatrix> {
        self.pipeline(format)?;
        let (block_len, block_bytes) = format.block();
        if cols == 0 || cols % block_len != 0 {
            return Err(Error::Compute(format!("{cols} columns are not whole {format:?} blocks")));
        }
        let row_bytes = cols / block_len * block_bytes;
        if rows.checked_mul(row_bytes) != Some(bytes.len()) {
            return Err(Error::Compute(format!("{} bytes are not {rows} rows of {row_bytes}", bytes.len())));
        }
        // Padded to whole words (the shader reads u32s), plus one word: the byte readers never
        // look past the buffer even for the last block.
        let padded = (bytes.len() + 4).next_multiple_of(4);
        self.check_size(padded, "a weight matrix")?;
        let mut data = Vec::with_capacity(padded);
        data.extend_from_slice(bytes);
        data.resize(padded, 0);
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("weights"),
            contents: &data,
            usage: wgpu::BufferUsages::STORAGE,
        });
        Ok(GpuMatrix { format, rows, cols, row_bytes, buffer })
    }

    /// Uploads `rows × width` activations.
    ///
    /// # Errors
    /// [`Error::Gpu`] when `values` is not `rows × width` long or too large for the device.
    pub fn tensor(&self, values: &[f32], rows: usize, width: usize) -> Result<GpuTensor> {
        if rows.checked_mul(width) != Some(values.len()) || values.is_empty() {
            return Err(gpu_error(format!("{} values are not {rows} rows of {width}", values.len())));
        }
        self.check_size(values.len() * 4, "activations")?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("activations"),
            contents: &bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        });
        Ok(GpuTensor { rows, width, buffer })
    }

    /// The product's pipeline for `format`.
    fn pipeline(&self, format: Format) -> Result<&wgpu::ComputePipeline> {
        self.matvec
            .iter()
            .find(|(f, _)| *f == format)
            .map(|(_, pipeline)| pipeline)
            .ok_or_else(|| gpu_error(format!("no GPU kernel for {format:?} weights")))
    }

    fn check_size(&self, bytes: usize, what: &str) -> Result<()> {
        let limits = self.device.limits();
        let limit = u64::from(limits.max_storage_buffer_binding_size).min(limits.max_buffer_size);
        if bytes as u64 > limit {
            return Err(gpu_error(format!(
                "{what} of {:.1} MiB is larger than the largest storage buffer of {} ({:.1} MiB)",
                bytes as f64 / 1048576.0,
                self.adapter_name(),
                limit as f64 / 1048576.0
            )));
        }
        Ok(())
    }

    /// `x · Wᵀ`: each of `x`'s rows multiplied by the matrix, `x.rows × w.rows` values, recorded
    /// into `encoder`.
    ///
    /// # Errors
    /// [`Error::Gpu`] when the shapes do not fit or the batch is larger than a dispatch.
    pub fn matmul(&self, encoder: &mut wgpu::CommandEncoder, x: &GpuTensor, w: &GpuMatrix) -> Result<GpuTensor> {
        if x.width != w.cols {
            return Err(gpu_error(format!("activations {} wide for a matrix of {} columns", x.width, w.cols)));
        }
        let pipeline = self.pipeline(w.format)?;
        let groups_x = (w.rows as u32).min(MAX_GROUPS);
        let groups_y = (w.rows as u32).div_ceil(groups_x);
        if x.rows > MAX_GROUPS as usize || groups_y > MAX_GROUPS {
            return Err(gpu_error(format!("a product of {} rows by {} is larger than one dispatch", x.rows, w.rows)));
        }
        let bytes = x.rows * w.rows * 4;
        self.check_size(bytes, "a product's result")?;
        let out = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("product"),
            size: bytes as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let params: Vec<u8> =
            [w.rows as u32, w.cols as u32, w.row_bytes as u32, groups_x].iter().flat_map(|v| v.to_le_bytes()).collect();
        let params = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("matvec params"),
            contents: &params,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("matvec"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: w.buffer.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: x.buffer.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: out.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: params.as_entire_binding() },
            ],
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("matvec"), timestamp_writes: None });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(groups_x, groups_y, x.rows as u32);
        drop(pass);
        Ok(GpuTensor { rows: x.rows, width: w.rows, buffer: out })
    }

    /// A new command encoder, for the operations of one submission.
    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("candlewick") })
    }

    /// Submits `encoder` with a copy of `x` at its end, and reads `x` back once the GPU is done.
    ///
    /// # Errors
    /// [`Error::Gpu`] when the readback fails (a lost device).
    pub async fn read(&self, mut encoder: wgpu::CommandEncoder, x: &GpuTensor) -> Result<Vec<f32>> {
        let size = (x.rows * x.width * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_buffer_to_buffer(&x.buffer, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (sender, receiver) = futures::channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        // Natively this waits for the GPU and runs the callback; in the browser it returns at
        // once and the callback comes from the event loop.
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(gpu_error)?;
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
}
