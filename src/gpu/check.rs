//! The GPU products against the CPU kernels, on random blocks: run by `cargo test --features
//! webgpu` natively (Vulkan) and by `tests/browser/gpu.mjs` in Chromium (WebGPU), the same
//! code on both, so a browser failure reads as a native one does.
//!
//! The GPU quantizes the activations as the CPU does (x̂: 8-bit values times their block's
//! scale) and sums blocks as the CPU does (see `gpu/mod.rs`), so each product is checked
//! three ways, per output value:
//!
//! - **against the exact product** of the dequantized weights and the CPU's x̂ (in f64):
//!   `|gpu − exact| ≤ 1e-5 · Σ|w·x̂|`. The f32 arithmetic rounds a few times per block term
//!   and once per addition of a term (128 blocks in the longest row here), each by at most
//!   2⁻²⁴ ≈ 6e-8 of the magnitudes involved: 1.5e-5 in the worst case, about
//!   √(3 · 128) · 6e-8 ≈ 1.2e-6 for random signs; 1e-5 also covers the K-quants'
//!   `d·Σ − dmin·Σ`, whose terms are larger than their difference. An activation rounded the other way by
//!   the GPU's quantizer moves a sum by about `|w|·d`, some 1e-3 of Σ|w·x̂|.
//! - **against the CPU kernel** ([`blocks::dot`]): `|gpu − cpu| ≤ 1e-6 · Σ|w·x̂|`, a few ulps
//!   of the largest terms: what a fused multiply-add in a block term, or an activation on a
//!   rounding boundary that WGSL's division sends the other way, may move.
//! - **bit for bit**: how many values are the CPU's exactly (reported, not required, for the
//!   two reasons above).
//!
//! A reported `ratio` is the largest |gpu − cpu| over its bound (≤ 1 passes).

use super::{Gpu, GpuMatrix, GPU_FORMATS};
use crate::error::Result;
use crate::kernels::blocks::{self, ActFormat, Activations};
use crate::kernels::Format;

/// One format's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelReport {
    /// The format, as ggml names it (`Q4_K`).
    pub format: String,
    /// The shapes multiplied: (batch rows, matrix rows, columns) of each case.
    pub shapes: Vec<(usize, usize, usize)>,
    /// Largest |gpu − cpu|.
    pub max_abs_cpu: f64,
    /// Largest |gpu − cpu| / Σ|w·x̂| of its row.
    pub max_rel_cpu: f64,
    /// Largest |gpu − cpu| over its bound.
    pub ratio_cpu: f64,
    /// Largest |gpu − exact|.
    pub max_abs_exact: f64,
    /// Largest |gpu − exact| / Σ|w·x̂|.
    pub max_rel_exact: f64,
    /// Values equal to the CPU's to the bit, of `values`.
    pub identical: usize,
    /// Values compared.
    pub values: usize,
    /// The first values out of bounds, in words (empty when it passes).
    pub failures: Vec<String>,
}

impl KernelReport {
    /// Whether every value was within its bounds.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Bound on |gpu − exact| relative to Σ|w·x̂| (see the module's documentation).
const EXACT_TOLERANCE: f64 = 1e-5;
/// |gpu − cpu| relative to Σ|w·x̂| (see the module's documentation).
const CPU_TOLERANCE: f64 = 1e-6;

/// (batch rows, matrix rows, columns): odd row counts, fewer than a workgroup's 64 threads
/// (a thread per row) and more, not a multiple of 64 (131); rows of 768 and 4096 columns.
const SHAPES: [(usize, usize, usize); 3] = [(3, 37, 768), (2, 9, 4096), (2, 131, 512)];

/// A xorshift generator: the same blocks on every run and every target.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `rows` rows of random blocks: random bytes, with each f16 scale (and minimum) set to a
/// normal value of either sign, as random bytes would give NaNs and infinities.
fn random_rows(rng: &mut Rng, format: Format, rows: usize, cols: usize) -> Vec<u8> {
    let (block_len, block_bytes) = format.block();
    let mut data: Vec<u8> = (0..rows * cols / block_len * block_bytes).map(|_| rng.next() as u8).collect();
    for block in data.chunks_exact_mut(block_bytes) {
        for &at in format.f16_scale_offsets() {
            let scale = half::f16::from_f32(rng.unit() * 0.05);
            block[at..at + 2].copy_from_slice(&scale.to_le_bytes());
        }
    }
    data
}

/// The ggml name of a format the GPU runs.
fn ggml_name(format: Format) -> String {
    match format {
        Format::Q4K => "Q4_K".into(),
        Format::Q5K => "Q5_K".into(),
        Format::Q6K => "Q6_K".into(),
        other => format!("{other:?}"),
    }
}

/// Every GPU product against the CPU kernel and the exact product, on random blocks.
///
/// # Errors
/// [`crate::Error::Gpu`] when the GPU fails to run them (a product out of bounds is a failure
/// in its report, not an error).
pub async fn run(gpu: &Gpu) -> Result<Vec<KernelReport>> {
    let mut reports = Vec::new();
    for (i, format) in GPU_FORMATS.into_iter().enumerate() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
        let mut report = KernelReport {
            format: ggml_name(format),
            shapes: SHAPES.to_vec(),
            max_abs_cpu: 0.0,
            max_rel_cpu: 0.0,
            ratio_cpu: 0.0,
            max_abs_exact: 0.0,
            max_rel_exact: 0.0,
            identical: 0,
            values: 0,
            failures: Vec::new(),
        };
        for (batch, rows, cols) in SHAPES {
            let data = random_rows(&mut rng, format, rows, cols);
            let x: Vec<f32> = (0..batch * cols).map(|_| rng.unit() * 2.0).collect();
            let (block_len, block_bytes) = format.block();
            let row_bytes = cols / block_len * block_bytes;
            let w = gpu.upload(format, &data, rows, cols)?;
            let got = product(gpu, &w, &x, batch).await?;
            for b in 0..batch {
                let xb = &x[b * cols..(b + 1) * cols];
                let mut act = Activations::default();
                act.quantize(xb, format.act());
                let xq = quantized_values(&act, format.act(), cols);
                let mut wrow = vec![0f32; cols];
                for r in 0..rows {
                    let row = &data[r * row_bytes..(r + 1) * row_bytes];
                    blocks::dequantize(format, row, &mut wrow);
                    let cpu = f64::from(blocks::dot(format, row, &act));
                    let gpu_value = f64::from(got[b * rows + r]);
                    let (mut exact, mut magnitude) = (0f64, 0f64);
                    for (&wv, &qv) in wrow.iter().zip(&xq) {
                        exact += f64::from(wv) * qv;
                        magnitude += (f64::from(wv) * qv).abs();
                    }
                    let bound = CPU_TOLERANCE * magnitude;
                    report.identical += usize::from(gpu_value.to_bits() == cpu.to_bits());
                    report.values += 1;
                    let (d_cpu, d_exact) = ((gpu_value - cpu).abs(), (gpu_value - exact).abs());
                    report.max_abs_cpu = report.max_abs_cpu.max(d_cpu);
                    report.max_rel_cpu = report.max_rel_cpu.max(d_cpu / magnitude);
                    report.ratio_cpu = report.ratio_cpu.max(d_cpu / bound);
                    report.max_abs_exact = report.max_abs_exact.max(d_exact);
                    report.max_rel_exact = report.max_rel_exact.max(d_exact / magnitude);
                    // `!(… <= …)`: a NaN fails.
                    #[allow(clippy::neg_cmp_op_on_partial_ord)]
                    if report.failures.len() < 4 {
                        if !(d_exact <= EXACT_TOLERANCE * magnitude) {
                            report.failures.push(format!(
                                "{rows}×{cols} batch row {b}, row {r}: gpu {gpu_value} but exact {exact} (Σ|w·x̂| {magnitude:.4})"
                            ));
                        } else if !(d_cpu <= bound) {
                            report.failures.push(format!(
                                "{rows}×{cols} batch row {b}, row {r}: gpu {gpu_value} but cpu {cpu}, more than the {bound:.3e} allowed"
                            ));
                        }
                    }
                }
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

/// `x · Wᵀ` on the GPU, read back.
async fn product(gpu: &Gpu, w: &GpuMatrix, x: &[f32], batch: usize) -> Result<Vec<f32>> {
    let x = gpu.tensor(x, batch, w.cols)?;
    let y = gpu.matmul(&x, w)?;
    gpu.read(&y).await
}

/// The values the CPU kernel multiplies by: the 8-bit activations times their block's scale.
fn quantized_values(act: &Activations, format: ActFormat, cols: usize) -> Vec<f64> {
    let block = match format {
        ActFormat::Q8K => 256,
        _ => 32,
    };
    (0..cols).map(|i| f64::from(act.qs[i]) * f64::from(act.d[i / block])).collect()
}

/// One operation of the forward pass on the GPU against the CPU backend's, or one function of
/// `exact.wgsl` against the CPU's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OperationReport {
    /// What was compared.
    pub operation: String,
    /// Values equal to the CPU's to the bit, of `values`.
    pub identical: usize,
    /// Values compared.
    pub values: usize,
    /// Largest |gpu − cpu| over the largest |cpu|.
    pub max_rel: f64,
    /// 0: every value must be the CPU's to the bit; else the bound on `max_rel`; infinite:
    /// reported only (WGSL's own `fma` and `exp`, for comparison).
    pub tolerance: f64,
}

impl OperationReport {
    /// Whether the values met the tolerance.
    pub fn passed(&self) -> bool {
        if self.tolerance == 0.0 {
            self.identical == self.values
        } else {
            self.max_rel <= self.tolerance
        }
    }
}

fn compare(operation: String, got: &[f32], cpu: &[f32], tolerance: f64) -> OperationReport {
    let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let worst = if got.len() == cpu.len() { got.iter().zip(cpu).map(|(g, c)| (g - c).abs()).fold(0f32, f32::max) / scale } else { f32::INFINITY };
    let identical = got.iter().zip(cpu).filter(|(g, c)| g.to_bits() == c.to_bits()).count();
    OperationReport { operation, identical, values: cpu.len(), max_rel: f64::from(worst), tolerance }
}

/// Each operation of the forward pass on the GPU against the CPU backend's, on random values:
/// every value's bits the CPU's, but for GELU (see below) and attention without flash attention, whose GPU form
/// sums in another order than the CPU's (llama.cpp's tiled f16 products and its vectorised
/// exponential) and is held to 2e-3 of the largest value: its probabilities are rounded to
/// f16 (2⁻¹¹ relative), so a last-bit difference before that rounding moves one by up to
/// 2⁻¹¹. The decoder runs that form only where the value width differs from the key width
/// (none of the models the GPU runs today).
///
/// # Errors
/// [`crate::Error::Gpu`] when the GPU fails to run them (a difference is a failure in its
/// report, not an error).
pub async fn operations(gpu: &Gpu) -> Result<Vec<OperationReport>> {
    use crate::arch::attention::{Rope, Spec};
    use crate::arch::{Activation, AttentionKernel, RopeStyle};
    use crate::backend::{cpu::Tensor, Backend, CacheSpec, Cpu};

    let cpu = Cpu::default();
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.unit()).collect() };
    let both = |values: &[f32], rows: usize| -> Result<(Tensor, super::GpuTensor)> {
        Ok((Tensor { rows, data: values.to_vec() }, gpu.tensor(values, rows, values.len() / rows)?))
    };
    let mut reports = Vec::new();
    let (rows, heads, kv_heads, head_dim) = (5, 6, 2, 64);
    let width = heads * head_dim;

    let x = random(rows * width);
    let weight = random(width);
    let (mut c, mut g) = both(&x, rows)?;
    let (cw, gw) = (cpu.vector(weight.clone())?, gpu.vector(weight)?);
    cpu.rms_norm(&mut c, &cw, 1e-5)?;
    gpu.rms_norm(&mut g, &gw, 1e-5)?;
    reports.push(compare("rms_norm".into(), &gpu.read(&g).await?, &c.data, 0.0));

    for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
        let rope = Rope { dims: head_dim, base: 10000.0, style, yarn: None, factors: None, mscale: 1.0 };
        let (mut c, mut g) = both(&x, rows)?;
        cpu.rope(&mut c, heads, head_dim, 37, &rope)?;
        gpu.rope(&mut g, heads, head_dim, 37, &rope)?;
        reports.push(compare(format!("rope {style:?} at 37"), &gpu.read(&g).await?, &c.data, 0.0));
    }

    // Gates over SiLU's and GELU's whole range (GELU saturates beyond ±10).
    let gate: Vec<f32> = x.iter().map(|v| v * 12.0).collect();
    let up = random(rows * width);
    for activation in [Activation::Silu, Activation::GeluTanh] {
        let (c, g) = both(&gate, rows)?;
        let (cu, gu) = both(&up, rows)?;
        let c = cpu.gated(c, &cu, activation)?;
        let g = gpu.gated(g, &gu, activation)?;
        // GELU's tanh is a quotient of exact exponentials, within a few ulp of 1 but not
        // correctly rounded as the CPU's (f64) tanh: after the f16 rounding of the result, a
        // few values in a thousand differ by an f16 ulp, each of them small (the largest seen,
        // 1.5e-8 of the largest value): 1e-6 of the largest value bounds them.
        let tolerance = if activation == Activation::Silu { 0.0 } else { 1e-6 };
        reports.push(compare(format!("gated {activation:?}"), &gpu.read(&g).await?, &c.data, tolerance));
    }

    let (mut c, mut g) = both(&x, rows)?;
    let (cu, gu) = both(&up, rows)?;
    cpu.add(&mut c, &cu)?;
    gpu.add(&mut g, &gu)?;
    cpu.scale(&mut c, 0.125)?;
    gpu.scale(&mut g, 0.125)?;
    reports.push(compare("add, scale".into(), &gpu.read(&g).await?, &c.data, 0.0));

    let (c, g) = both(&x, rows)?;
    let cp = cpu.split(&c, &[64, 32, 32])?;
    let gp = gpu.split(&g, &[64, 32, 32])?;
    for (i, (c, g)) in cp.iter().zip(&gp).enumerate() {
        reports.push(compare(format!("split part {i}"), &gpu.read(g).await?, &c.data, 0.0));
    }
    let cj = cpu.join(&cp[1], 32, &cp[0], 64, 1)?;
    let gj = gpu.join(&gp[1], 32, &gp[0], 64, 1)?;
    reports.push(compare("join".into(), &gpu.read(&gj).await?, &cj.data, 0.0));
    let (c, g) = both(&x, rows)?;
    reports.push(compare("tail".into(), &gpu.read(&gpu.tail(g, 3)?).await?, &cpu.tail(c, 3)?.data, 0.0));

    // Attention: a prompt of 7 positions, then one of `rows`, then one more position.
    for kernel in [AttentionKernel::Flash, AttentionKernel::Unfused] {
        let spec = CacheSpec { kv_heads, capacity: 32, head_dim, value_dim: head_dim, values_in_keys: false, window: None };
        let (mut cc, mut gc) = (cpu.cache(&spec)?, gpu.cache(&spec)?);
        let attention = Spec { heads, scale: 0.125, softcap: None, window: None, chunk: None, sinks: None, kernel };
        let mut pos = 0;
        for n in [7, rows, 1] {
            // Scores of a few units, as a model's are: the softmax's exponentials over a range.
            let q: Vec<f32> = random(n * width).iter().map(|v| v * 4.0).collect();
            let (k, v) = (random(n * kv_heads * head_dim), random(n * kv_heads * head_dim));
            let ((cq, gq), (ck, gk), (cv, gv)) = (both(&q, n)?, both(&k, n)?, both(&v, n)?);
            let c = cpu.attend(&cq, &ck, Some(&cv), &mut cc, pos, &attention)?;
            let g = gpu.attend(&gq, &gk, Some(&gv), &mut gc, pos, &attention)?;
            let tolerance = if kernel == AttentionKernel::Flash { 0.0 } else { 2e-3 };
            reports.push(compare(format!("attend {kernel:?} {n} at {pos}"), &gpu.read(&g).await?, &c.data, tolerance));
            pos += n;
        }
    }
    reports.extend(arithmetic(gpu).await?);
    Ok(reports)
}

/// `exact.wgsl`'s `fma_exact` and `exp_exact` on 200,000 random inputs against the CPU's fused
/// multiply-add and e^x ([`crate::arch::math`]), bit for bit; WGSL's own `fma` and `exp`
/// reported beside them. The products' addends cancel them often (a third of the cases); the
/// exponents span the range of normal results.
async fn arithmetic(gpu: &Gpu) -> Result<Vec<OperationReport>> {
    use wgpu::util::DeviceExt;
    let n = 200_000usize;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let value = |rng: &mut Rng| rng.unit() * 2f32.powi((rng.next() % 24) as i32 - 12);
    let a: Vec<f32> = (0..n).map(|_| value(&mut rng)).collect();
    let b: Vec<f32> = (0..n).map(|_| value(&mut rng)).collect();
    let c: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { -(a[i] * b[i]) * (1.0 + value(&mut rng) * 1e-3) } else { value(&mut rng) }).collect();
    // Results from e^-87 (near the smallest normal f32) to e^88 (near the largest); the
    // subnormal results below are a GPU's to flush to zero (SwiftShader does), and a weight
    // or e^-x that small changes no sum of the forward pass.
    let x: Vec<f32> = (0..n).map(|_| rng.unit() * 87.5 + 0.5).collect();
    let source = format!("{}\n{}", include_str!("wgsl/exact.wgsl"), include_str!("wgsl/exact_check.wgsl"));
    let device = &gpu.device;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some("exact check"), source: wgpu::ShaderSource::Wgsl(source.into()) });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("exact check"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let input = |v: &[f32]| device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: &super::f32_bytes(v), usage: wgpu::BufferUsages::STORAGE });
    let inputs = [input(&a), input(&b), input(&c), input(&x)];
    let out = gpu.storage(4 * n, "results")?;
    let mut entries: Vec<_> = inputs.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() }).collect();
    entries.push(wgpu::BindGroupEntry { binding: 4, resource: out.as_entire_binding() });
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipeline.get_bind_group_layout(0), entries: &entries });
    gpu.record(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &group, &[]);
        // 64 threads a workgroup, 1024 workgroups a row of the dispatch.
        pass.dispatch_workgroups(1024, n.div_ceil(65536) as u32, 1);
    })?;
    let o = gpu.read(&super::GpuTensor { rows: 4, width: n, buffer: out }).await?;
    let fused: Vec<f32> = (0..n).map(|i| crate::arch::math::fma(a[i], b[i], c[i])).collect();
    let exp: Vec<f32> = x.iter().map(|&v| crate::arch::math::exp(v)).collect();
    Ok(vec![
        compare("fma_exact".into(), &o[..n], &fused, 0.0),
        compare("WGSL fma (reported only)".into(), &o[n..2 * n], &fused, f64::INFINITY),
        compare("exp_exact".into(), &o[2 * n..3 * n], &exp, 0.0),
        compare("WGSL exp (reported only)".into(), &o[3 * n..], &exp, f64::INFINITY),
    ])
}

/// Prints `reports` (to standard error) and fails with those that did not pass.
#[cfg(test)]
fn assert_operations(adapter: &str, reports: &[OperationReport]) {
    eprintln!("on {adapter}:");
    for r in reports {
        eprintln!("{:>28}: {}/{} bit-identical to the cpu; max |gpu − cpu| {:.2e} of max |cpu|", r.operation, r.identical, r.values, r.max_rel);
    }
    let failed: Vec<String> = reports.iter().filter(|r| !r.passed()).map(|r| format!("{}: {} of {} values differ, max {:.2e}", r.operation, r.values - r.identical, r.values, r.max_rel)).collect();
    assert!(failed.is_empty(), "GPU operations unlike the CPU's:\n{}", failed.join("\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every WGSL product against the CPU kernel, on this machine's Vulkan device (Mesa's
    /// lavapipe on a machine without a GPU: `apt-get install mesa-vulkan-drivers`). Fails,
    /// rather than skips, without one: `--features webgpu` asks for the GPU.
    #[test]
    fn gpu_products_match_the_cpu_kernels() {
        let gpu = match futures::executor::block_on(Gpu::new()) {
            Ok(gpu) => gpu,
            Err(e) => panic!("{e} (natively the GPU tests need a Vulkan driver: Mesa's lavapipe is `apt-get install mesa-vulkan-drivers`)"),
        };
        let reports = futures::executor::block_on(run(&gpu)).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("on {}:", gpu.adapter_name());
        for r in &reports {
            eprintln!(
                "{:>5}: {}/{} bit-identical to the cpu; vs cpu max abs {:.2e}, rel {:.2e}, {:.0}% of bound; vs exact max abs {:.2e}, rel {:.2e}",
                r.format,
                r.identical,
                r.values,
                r.max_abs_cpu,
                r.max_rel_cpu,
                r.ratio_cpu * 100.0,
                r.max_abs_exact,
                r.max_rel_exact
            );
        }
        let failed: Vec<String> = reports.iter().filter(|r| !r.passed()).map(|r| format!("{}: {}", r.format, r.failures.join("; "))).collect();
        assert!(failed.is_empty(), "GPU products out of bounds:\n{}", failed.join("\n"));
    }

    /// Every other operation of the forward pass, and `exact.wgsl`, against the CPU's.
    #[test]
    fn gpu_operations_match_the_cpu_backend() {
        let gpu = futures::executor::block_on(Gpu::new()).unwrap_or_else(|e| panic!("{e} (natively the GPU tests need a Vulkan driver: `apt-get install mesa-vulkan-drivers`)"));
        let reports = futures::executor::block_on(operations(&gpu)).unwrap_or_else(|e| panic!("{e}"));
        assert_operations(&gpu.adapter_name(), &reports);
    }
}
