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
}
