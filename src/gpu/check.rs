//! The GPU products against the CPU kernels, on random blocks: run by `cargo test --features
//! webgpu` natively (Vulkan) and by `tests/browser/gpu.mjs` in Chromium (WebGPU), the same
//! code on both, so a browser failure reads as a native one does.
//!
//! The GPU multiplies the weights by the activations as the CPU quantizes them, x̂ (8-bit
//! values times their block's scale, see `gpu/mod.rs`), so each product is checked twice, per
//! output value:
//!
//! - **against the exact product** of the dequantized weights and the CPU's x̂ (in f64):
//!   `|gpu − exact| ≤ 1e-5 · Σ|w·x̂|`. The shader's f32 arithmetic rounds about 40 times along
//!   any one sum (32 products in a unit, a thread's units, a 6-level tree, the block's scales),
//!   each by at most 2⁻²⁴ ≈ 6e-8 of the magnitudes involved: 2.4e-6, with a margin of four for
//!   contractions into fused multiply-adds and the K-quants' `d·sc·q − dmin·m`, whose
//!   dequantized terms are larger than their difference. This also checks the GPU's
//!   quantizer: an activation rounded the other way moves a sum by about `|w|·d`, some 1e-3
//!   of Σ|w·x̂|.
//! - **against the CPU kernel** ([`blocks::dot`], llama.cpp's arithmetic, integer block sums):
//!   `|gpu − cpu| ≤ r + 2e-5 · Σ|w·x̂|`, both sides' f32 rounding, and for Q8_1 (Q4_1 and
//!   Q5_1 weights) `r`: the CPU's block sums are rounded to f16 apart from its scale,
//!   `Σ_b |m_b| · |s_b − d_b·Σq_b|`.
//!
//! The GPU's quantizer divides as WGSL does (within 2.5 ulp), so an activation exactly on a
//! rounding boundary could round the other way; random activations do not land there.
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
/// Both sides' f32 rounding, relative to Σ|w·x̂|, in the bound against the CPU.
const ROUNDING: f64 = 2e-5;

/// (batch rows, matrix rows, columns): odd row counts; one row of more units than a workgroup
/// has threads (4096 columns are 128 units), one of fewer (768 columns).
const SHAPES: [(usize, usize, usize); 2] = [(3, 37, 768), (2, 9, 4096)];

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
                    let bound = minimum_sum_rounding(format, row, &act) + ROUNDING * magnitude;
                    let (d_cpu, d_exact) = ((gpu_value - cpu).abs(), (gpu_value - exact).abs());
                    report.max_abs_cpu = report.max_abs_cpu.max(d_cpu);
                    report.max_rel_cpu = report.max_rel_cpu.max(d_cpu / magnitude);
                    report.ratio_cpu = report.ratio_cpu.max(d_cpu / bound);
                    report.max_abs_exact = report.max_abs_exact.max(d_exact);
                    report.max_rel_exact = report.max_rel_exact.max(d_exact / magnitude);
                    // `!(… <= …)`: a NaN fails.
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

/// Q8_1's block sums `s_b`, rounded to f16 on their own, against `d_b·Σq_b`: Σ_b |m_b|·|s_b −
/// d_b·Σq_b| (zero for the formats without a minimum per 32 values).
fn minimum_sum_rounding(format: Format, row: &[u8], act: &Activations) -> f64 {
    if !matches!(format, Format::Q4_1 | Format::Q5_1) {
        return 0.0;
    }
    let (_, size) = format.block();
    row.chunks_exact(size)
        .enumerate()
        .map(|(b, block)| {
            let m = f64::from(half::f16::from_le_bytes([block[2], block[3]]).to_f32());
            let sum_q: f64 = act.qs[b * 32..b * 32 + 32].iter().map(|&q| f64::from(q)).sum();
            (m * (f64::from(act.s[b]) - f64::from(act.d[b]) * sum_q)).abs()
        })
        .sum()
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
                "{:>5}: vs cpu max abs {:.2e}, rel {:.2e}, {:.0}% of bound; vs exact max abs {:.2e}, rel {:.2e}",
                r.format,
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
}
