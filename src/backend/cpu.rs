//! The CPU backend: activations as host vectors, weights in their GGUF blocks (or repacked
//! where that pays), the kernels of [`crate::kernels`], attention of [`crate::arch::attention`].
//! Its operations are the references every other backend is tested against.

use std::sync::atomic::{AtomicUsize, Ordering};

use half::f16;

use super::{Backend, CacheSpec, KvStore, Products};
use crate::arch::attention::{self, KvCache, Rope, Spec};
use crate::arch::conv::ConvState;
use crate::arch::{math, route, shared_gate_weight, Activation, Experts, Moe};
use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::kernels::{QLinear, QMatrix, QuantizedRows};

/// Bytes of weights a model may repack for this CPU's kernels (the AVX-512 VNNI strips) at
/// least, beyond which matrices are used in place, in the file's layout: an eighth of the
/// memory the system has available when the model loads, where that is more ([`repack_budget`]).
/// A repacked matrix is a copy: its file bytes are released, but a copy of more would crowd out
/// the page cache that a memory-mapped file larger than memory runs from. Matrices are repacked
/// in the order the model loads them (block by block, then the output layer) where it pays
/// ([`Products`]), experts never: they are most of a mixture-of-experts model's bytes, and
/// decoding reads only the chosen few.
pub const REPACK_BUDGET: usize = 1 << 30;

/// The repacking budget of a model loaded now: an eighth of the available memory, at least
/// [`REPACK_BUDGET`] (Kimi K2's output layer alone is 0.96 GB in Q6_K, and its strips read
/// 1.3 times as fast as its rows).
fn repack_budget() -> usize {
    let eighth = crate::platform::available_memory().map_or(0, |bytes| usize::try_from(bytes / 8).unwrap_or(usize::MAX));
    eighth.max(REPACK_BUDGET)
}

/// The CPU. One per loaded model: it keeps what is left of the model's repacking budget
/// ([`REPACK_BUDGET`]).
pub struct Cpu {
    budget: AtomicUsize,
}

impl Default for Cpu {
    fn default() -> Cpu {
        Cpu { budget: AtomicUsize::new(repack_budget()) }
    }
}

/// `rows × width` values on the host, row after row.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Positions of the batch.
    pub rows: usize,
    /// `[rows][width]`
    pub data: Vec<f32>,
}

impl Tensor {
    /// The values of each row.
    pub fn width(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }
}

fn mismatch(what: &str, got: usize, expected: usize) -> Error {
    Error::Compute(format!("{what}: {got} values where {expected} were expected"))
}

impl Backend for Cpu {
    type Tensor = Tensor;
    type Matrix = QLinear;
    type Cache = KvCache;
    type Conv = ConvState;

    /// Repacks the matrix for this CPU's kernels when that pays for its `products`, the
    /// kernels would and the budget holds it; the file bytes of a repacked matrix are released.
    fn matrix(&self, ggml_type: u32, bytes: Bytes, rows: usize, cols: usize, bias: Option<Vec<f32>>, products: Products) -> Result<QLinear> {
        let pays = match products {
            Products::Batched => true,
            Products::OneRow => QMatrix::repacking_pays_for_one_row(ggml_type),
            Products::InPlace => false,
        };
        let len = bytes.len();
        let repack = pays
            && QMatrix::would_repack(ggml_type, rows, cols)
            && self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(len)).is_ok();
        let matrix = QMatrix::load(ggml_type, bytes.clone(), rows, cols, repack)?;
        if repack {
            bytes.release();
        }
        Ok(QLinear::new(matrix, bias))
    }

    fn shape(&self, matrix: &QLinear) -> (usize, usize) {
        (matrix.weight().rows(), matrix.weight().cols())
    }

    fn vector(&self, values: Vec<f32>) -> Result<Tensor> {
        Ok(Tensor { rows: 1, data: values })
    }

    fn cache(&self, s: &CacheSpec) -> Result<KvCache> {
        KvCache::new(s)
    }

    fn conv_state(&self, width: usize, kernel: usize, capacity: usize) -> Result<ConvState> {
        ConvState::new(width, kernel, capacity)
    }

    fn embed(&self, table: &QLinear, tokens: &[u32]) -> Result<Tensor> {
        Ok(Tensor { rows: tokens.len(), data: table.weight().gather(tokens)? })
    }

    fn matmul(&self, x: &Tensor, w: &QLinear) -> Result<Tensor> {
        Ok(Tensor { rows: x.rows, data: w.forward(&x.data, x.rows)? })
    }

    /// A token's few products (decoding) run as one parallel piece, in parts of rows; a
    /// prompt's one after the other, each spread over the threads.
    fn matmuls(&self, x: &Tensor, ws: &[&QLinear]) -> Result<Vec<Tensor>> {
        if x.rows > PARTS_UP_TO_ROWS {
            return ws.iter().map(|w| self.matmul(x, w)).collect();
        }
        // The input quantized once for each format and width among the matrices.
        let mut quantized: Vec<QuantizedRows> = Vec::new();
        let mut input = Vec::with_capacity(ws.len());
        for w in ws {
            match quantized.iter().position(|q| q.fits(w.weight())) {
                Some(i) => input.push(i),
                None => {
                    quantized.push(w.weight().quantize(&x.data, x.rows)?);
                    input.push(quantized.len() - 1);
                }
            }
        }
        let inputs: Vec<&QuantizedRows> = input.iter().map(|&i| &quantized[i]).collect();
        in_parts(&inputs, |x| x.rows(), |i| ws[i].out_features(), EXPERT_PARTS, |i, x, range| ws[i].forward_part_quantized(x, range))
    }

    fn matmul_heads(&self, x: &Tensor, matrices: &[QLinear]) -> Result<Tensor> {
        let (heads, seq) = (matrices.len(), x.rows);
        let Some(first) = matrices.first() else { return Err(Error::Compute("per-head products without heads".into())) };
        let (width_out, width_in) = self.shape(first);
        if x.data.len() != seq * heads * width_in {
            return Err(mismatch("per-head products", x.data.len(), seq * heads * width_in));
        }
        // by_head[h]: head h's product, `[seq][width_out]`. The heads run side by side: one
        // head's product is small (Kimi K2's are 512×128) and runs on one thread, so one head
        // after another left the other threads idle (4 % of a Kimi K2 decoding).
        let mut by_head: Vec<Result<Vec<f32>>> = (0..heads).map(|_| Ok(Vec::new())).collect();
        crate::platform::parallel_chunks(&mut by_head, 1, |head, slot| {
            let rows: Vec<f32> = (0..seq).flat_map(|t| x.data[(t * heads + head) * width_in..][..width_in].iter().copied()).collect();
            slot[0] = matrices[head].forward(&rows, seq);
        });
        let mut out = vec![0f32; seq * heads * width_out];
        for (head, y) in by_head.into_iter().enumerate() {
            for (t, y) in y?.chunks_exact(width_out).enumerate() {
                out[(t * heads + head) * width_out..][..width_out].copy_from_slice(y);
            }
        }
        Ok(Tensor { rows: seq, data: out })
    }

    fn rms_norm(&self, x: &mut Tensor, weight: &Tensor, eps: f32) -> Result<()> {
        if weight.data.is_empty() || !x.data.len().is_multiple_of(weight.data.len()) {
            return Err(mismatch("RMS norm", x.data.len(), weight.data.len()));
        }
        attention::rms_norm(&mut x.data, &weight.data, eps);
        Ok(())
    }

    fn normed(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        let mut y = x.clone();
        self.rms_norm(&mut y, weight, eps)?;
        Ok(y)
    }

    fn rope(&self, x: &mut Tensor, heads: usize, head_dim: usize, pos: usize, rope: &Rope) -> Result<()> {
        if x.data.len() != x.rows * heads * head_dim {
            return Err(mismatch("RoPE", x.data.len(), x.rows * heads * head_dim));
        }
        attention::rope(&mut x.data, heads, head_dim, pos, rope);
        Ok(())
    }

    fn attend(&self, q: &Tensor, k: &Tensor, v: Option<&Tensor>, cache: &mut KvCache, pos: usize, spec: &Spec) -> Result<Tensor> {
        let data = attention::append_and_attend(cache, &q.data, &k.data, v.map_or(&[][..], |v| &v.data), q.rows, pos, spec)?;
        Ok(Tensor { rows: q.rows, data })
    }

    fn short_conv(&self, bcx: &Tensor, weights: &Tensor, state: &mut ConvState) -> Result<Tensor> {
        Ok(Tensor { rows: bcx.rows, data: state.convolve(&bcx.data, bcx.rows, &weights.data)? })
    }

    /// Row by row over the pool: a prompt's activations took as long as its products when one
    /// thread did them all.
    fn gated(&self, mut gate: Tensor, up: &Tensor, activation: Activation) -> Result<Tensor> {
        if gate.data.len() != up.data.len() {
            return Err(mismatch("gated activation", up.data.len(), gate.data.len()));
        }
        let width = gate.width();
        crate::platform::parallel_chunks(&mut gate.data, width.max(1), |row, gate| gated(activation, gate, &up.data[row * width..][..gate.len()]));
        Ok(gate)
    }

    fn add(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        if x.data.len() != y.data.len() {
            return Err(mismatch("residual", y.data.len(), x.data.len()));
        }
        add(&mut x.data, &y.data);
        Ok(())
    }

    fn scale(&self, x: &mut Tensor, by: f32) -> Result<()> {
        x.data.iter_mut().for_each(|v| *v *= by);
        Ok(())
    }

    fn soft_cap(&self, x: &mut Tensor, cap: f32) -> Result<()> {
        attention::soft_cap(&mut x.data, cap);
        Ok(())
    }

    fn scale_rows(&self, x: &mut Tensor, width: usize, by: &dyn Fn(usize) -> f32) -> Result<()> {
        for (i, row) in x.data.chunks_exact_mut(width.max(1)).enumerate() {
            let f = by(i);
            row.iter_mut().for_each(|v| *v *= f);
        }
        Ok(())
    }

    fn split(&self, x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
        let group: usize = widths.iter().sum();
        if group == 0 || !x.data.len().is_multiple_of(group) {
            return Err(mismatch("split", x.data.len(), group));
        }
        let groups = x.data.len() / group;
        let mut parts: Vec<Tensor> = widths.iter().map(|w| Tensor { rows: x.rows, data: Vec::with_capacity(groups * w) }).collect();
        for g in x.data.chunks_exact(group) {
            let mut at = 0;
            for (part, &w) in parts.iter_mut().zip(widths) {
                part.data.extend_from_slice(&g[at..at + w]);
                at += w;
            }
        }
        Ok(parts)
    }

    fn join(&self, a: &Tensor, a_width: usize, b: &Tensor, b_width: usize, repeat_b: usize) -> Result<Tensor> {
        let groups = a.data.len() / a_width.max(1);
        if a_width == 0 || !a.data.len().is_multiple_of(a_width) || repeat_b == 0 || b.data.len() != groups.div_ceil(repeat_b) * b_width {
            return Err(mismatch("join", b.data.len(), groups.div_ceil(repeat_b.max(1)) * b_width));
        }
        let mut out = Vec::with_capacity(groups * (a_width + b_width));
        for (i, first) in a.data.chunks_exact(a_width).enumerate() {
            out.extend_from_slice(first);
            out.extend_from_slice(&b.data[i / repeat_b * b_width..][..b_width]);
        }
        Ok(Tensor { rows: a.rows, data: out })
    }

    /// The (token, expert) pairs are grouped by expert, and each chosen expert runs once over
    /// all its tokens' rows, as llama.cpp's `MUL_MAT_ID` does: a prompt reads each expert's
    /// matrices once rather than once per token, and decoding touches only the chosen experts'
    /// weights. The experts run side by side on the thread pool. Every row's products are the
    /// same as one token's alone, and each token's expert outputs are summed in its routing
    /// order, so the result does not depend on the batch.
    fn experts(&self, x: &Tensor, moe: &Moe<Cpu>, spec: &Experts, activation: Activation) -> Result<Tensor> {
        let (seq, hidden) = (x.rows, x.width());
        let logits = self.matmul(x, &moe.router)?;
        let mut out = match &moe.shared {
            Some(mlp) => mlp.forward(self, x, activation)?,
            None => Tensor { rows: seq, data: vec![0f32; seq * hidden] },
        };
        if let Some(gate) = &moe.shared_gate {
            // One gate value per token.
            let gates = self.matmul(x, gate)?;
            for (row, &g) in out.data.chunks_exact_mut(hidden).zip(&gates.data) {
                row.iter_mut().for_each(|v| *v *= shared_gate_weight(g));
            }
        }
        // routes[token] = its (expert, weight) pairs, best first.
        let routes: Vec<Vec<(usize, f32)>> = logits.data.chunks_exact(spec.count).map(|logits| route(spec, moe.bias.as_deref(), logits)).collect();
        // weight[token][slot] = what its expert's input row is multiplied by (Llama 4), or 1.
        let input_weight = |token: usize, slot: usize| if spec.weigh_inputs { routes[token][slot].1 } else { 1.0 };
        // by_expert[e] = the (token, slot) pairs routed to expert e, in token order.
        let mut by_expert: Vec<Vec<(usize, usize)>> = vec![Vec::new(); spec.count];
        for (token, chosen) in routes.iter().enumerate() {
            for (slot, &(e, _)) in chosen.iter().enumerate() {
                by_expert.get_mut(e).ok_or_else(|| Error::Compute(format!("expert {e} of {}", spec.count)))?.push((token, slot));
            }
        }
        // outputs[e] = `[rows][hidden]`: expert e over its tokens' rows (none for an expert no
        // token chose).
        let input = |e: usize| {
            let tokens: &[(usize, usize)] = &by_expert[e];
            let mut data = Vec::with_capacity(tokens.len() * hidden);
            for &(t, s) in tokens {
                let w = input_weight(t, s);
                data.extend(x.data[t * hidden..(t + 1) * hidden].iter().map(|v| v * w));
            }
            Tensor { rows: tokens.len(), data }
        };
        let chosen: Vec<usize> = (0..spec.count).filter(|&e| !by_expert[e].is_empty()).collect();
        let outputs: Vec<Tensor> = if chosen.len() < EXPERTS_SIDE_BY_SIDE {
            self.experts_in_parts(moe, &chosen, &input, activation, spec.count)?
        } else {
            let mut outputs: Vec<Result<Tensor>> = (0..spec.count).map(|_| Ok(Tensor { rows: 0, data: Vec::new() })).collect();
            crate::platform::parallel_chunks(&mut outputs, 1, |e, slot| {
                if !by_expert[e].is_empty() {
                    slot[0] = moe.experts[e].forward(self, &input(e), activation);
                }
            });
            outputs.into_iter().collect::<Result<_>>()?
        };
        // cursor[e] = the next of expert e's output rows, taken in token order.
        let mut cursor = vec![0usize; spec.count];
        let mut routed = vec![0f32; hidden];
        for (token, chosen) in routes.iter().enumerate() {
            routed.iter_mut().for_each(|v| *v = 0.0);
            for &(e, w) in chosen {
                let y = &outputs[e].data[cursor[e] * hidden..(cursor[e] + 1) * hidden];
                cursor[e] += 1;
                // An input already weighed gives its output as it is.
                let w = if spec.weigh_inputs { 1.0 } else { w };
                routed.iter_mut().zip(y).for_each(|(o, y)| *o += y * w);
            }
            add(&mut out.data[token * hidden..(token + 1) * hidden], &routed);
        }
        Ok(out)
    }

    fn tail(&self, mut x: Tensor, from: usize) -> Result<Tensor> {
        if from > x.rows {
            return Err(Error::Compute(format!("rows from {from} of {}", x.rows)));
        }
        let width = x.width();
        Ok(Tensor { rows: x.rows - from, data: x.data.split_off(from * width) })
    }

    fn read(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }
}

/// Experts chosen by a batch from which each runs whole on one thread, side by side with the
/// others (a prompt's); below, a token's few run in parts ([`Cpu::experts_in_parts`]).
const EXPERTS_SIDE_BY_SIDE: usize = 16;

/// Parts each of a few experts' matrices is split into ([`Cpu::experts_in_parts`]), and each
/// of a token's few products on average ([`Backend::matmuls`]).
const EXPERT_PARTS: usize = 4;

/// Rows of activations up to which [`Backend::matmuls`] runs its products in parts, side by
/// side: a token's products are small, and one after the other each ended on a wait for the
/// slowest thread.
const PARTS_UP_TO_ROWS: usize = 8;

impl Cpu {
    /// The `chosen` experts over their inputs (`input(e)`), in two rounds, each spread over the
    /// threads in parts of rows: every expert's gate and up products and its activation, then
    /// every expert's down product. A token's eight experts, each whole on one thread, left a
    /// thread waiting for the last (Kimi K2: 1.5 % of decoding); parts of a few hundred rows
    /// balance to the end. Each row's products are the whole matrices'
    /// (`QLinear::forward_part`). Returns each of the `count` experts' output (empty for
    /// those not chosen).
    fn experts_in_parts(&self, moe: &Moe<Cpu>, chosen: &[usize], input: &(dyn Fn(usize) -> Tensor + Sync), activation: Activation, count: usize) -> Result<Vec<Tensor>> {
        // Each expert's input quantized once for its gate and (unless its format differs) up.
        let mut inputs = Vec::with_capacity(chosen.len());
        for &e in chosen {
            let (x, mlp) = (input(e), &moe.experts[e]);
            let gate = mlp.gate.weight().quantize(&x.data, x.rows)?;
            let up = if gate.fits(mlp.up.weight()) { None } else { Some(mlp.up.weight().quantize(&x.data, x.rows)?) };
            inputs.push((gate, up));
        }
        let hidden = in_parts(&inputs, |(x, _)| x.rows(), |i| moe.experts[chosen[i]].gate.out_features(), EXPERT_PARTS, |i, (x, up_x), range| {
            let mlp = &moe.experts[chosen[i]];
            let mut gate = mlp.gate.forward_part_quantized(x, range.clone())?;
            gated(activation, &mut gate, &mlp.up.forward_part_quantized(up_x.as_ref().unwrap_or(x), range)?);
            Ok(gate)
        })?;
        let hidden = chosen.iter().zip(&hidden).map(|(&e, h)| moe.experts[e].down.weight().quantize(&h.data, h.rows)).collect::<Result<Vec<_>>>()?;
        let down = in_parts(&hidden, |x| x.rows(), |i| moe.experts[chosen[i]].down.out_features(), EXPERT_PARTS, |i, x, range| moe.experts[chosen[i]].down.forward_part_quantized(x, range))?;
        let mut outputs: Vec<Tensor> = (0..count).map(|_| Tensor { rows: 0, data: Vec::new() }).collect();
        for (&e, product) in chosen.iter().zip(down) {
            outputs[e] = product;
        }
        Ok(outputs)
    }
}

/// For each product `i` (with its input rows `inputs[i]`, `rows(input)` of
/// them), the `[rows][width(i)]` values that `part(i, input, range)` gives `[rows][range]` of,
/// the parts (`parts` per product on average, of one size, a multiple of
/// [`QMatrix::PART_ROWS`]) computed side by side in one parallel piece.
fn in_parts<X: Sync>(
    inputs: &[X],
    rows: impl Fn(&X) -> usize,
    width: impl Fn(usize) -> usize,
    parts: usize,
    part: impl Fn(usize, &X, std::ops::Range<usize>) -> Result<Vec<f32>> + Sync,
) -> Result<Vec<Tensor>> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    // Parts of about equal size: the products' widths together, in `parts` parts per product.
    let total: usize = (0..inputs.len()).map(&width).sum();
    let size = total.div_ceil(parts * inputs.len()).next_multiple_of(QMatrix::PART_ROWS).max(QMatrix::PART_ROWS);
    let mut jobs = Vec::new();
    for i in 0..inputs.len() {
        let width = width(i);
        jobs.extend((0..width).step_by(size).map(|start| (i, start..(start + size).min(width))));
    }
    let mut results: Vec<Result<Vec<f32>>> = (0..jobs.len()).map(|_| Ok(Vec::new())).collect();
    crate::platform::parallel_chunks(&mut results, 1, |j, slot| {
        let (i, range) = jobs[j].clone();
        slot[0] = part(i, &inputs[i], range);
    });
    let mut out: Vec<Tensor> = inputs.iter().enumerate().map(|(i, x)| Tensor { rows: rows(x), data: vec![0f32; rows(x) * width(i)] }).collect();
    for ((i, range), values) in jobs.into_iter().zip(results) {
        let (values, out) = (values?, &mut out[i]);
        let full = out.width();
        if values.len() != out.rows * range.len() {
            return Err(mismatch("an expert's part", values.len(), out.rows * range.len()));
        }
        for (row, values) in values.chunks_exact(range.len().max(1)).enumerate() {
            out.data[row * full + range.start..][..range.len()].copy_from_slice(values);
        }
    }
    Ok(out)
}

impl KvStore for KvCache {
    fn truncate(&mut self, len: usize) -> bool {
        KvCache::truncate(self, len)
    }

    fn clear(&mut self) {
        KvCache::clear(self);
    }

    fn grow(&mut self, capacity: usize) -> Result<()> {
        KvCache::grow(self, capacity)
    }

    fn save(&self, out: &mut Vec<u8>) {
        self.filled_bytes(out);
    }

    fn saved_positions(&self, len: usize) -> usize {
        KvCache::saved_positions(self, len)
    }

    fn restore(&mut self, len: usize, bytes: &[u8]) -> Option<usize> {
        self.fill_from_bytes(len, bytes)
    }

    fn bytes_per_position(&self) -> usize {
        KvCache::bytes_per_position(self)
    }

    fn rows(&self) -> usize {
        KvCache::rows(self)
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// GELU (tanh form) as llama.cpp reads it from its table: the input rounded to f16, the result
/// rounded to f16; saturated beyond ±10.
fn gelu(x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let x = f16::from_f32(x).to_f32();
    let y = 0.5 * x * (1.0 + math::tanh(0.797_884_6 * x * (1.0 + 0.044_715 * x * x)));
    f16::from_f32(y).to_f32()
}

/// gpt-oss's clamped SwiGLU of one gate and up value, as ggml's `swiglu_oai` computes it (α 1.702,
/// limit 7).
fn swiglu_oai(gate: f32, up: f32) -> f32 {
    const ALPHA: f32 = 1.702;
    const LIMIT: f32 = 7.0;
    let x = gate.min(LIMIT);
    let y = up.clamp(-LIMIT, LIMIT);
    x / (1.0 + math::exp(ALPHA * -x)) * (y + 1.0)
}

/// `activation(gate) · up` for one row, in place in `gate`. (SiLU's e^-x is the C library's,
/// [`math::exp`]: ggml's vectorised exponential here made fewer greedy continuations match
/// llama.cpp's — Qwen2.5-Coder 6 of 8 raw prompts instead of 8, SmolLM2 1 of 4 chats instead
/// of 2.)
fn gated(activation: Activation, gate: &mut [f32], up: &[f32]) {
    // One loop per activation, so that SiLU's (branch-free `math::exp`) runs in vector lanes.
    let pairs = gate.iter_mut().zip(up);
    match activation {
        Activation::Silu => pairs.for_each(|(g, u)| *g = *g / (1.0 + math::exp(-*g)) * u),
        Activation::GeluTanh => pairs.for_each(|(g, u)| *g = gelu(*g) * u),
        Activation::SwigluOai => pairs.for_each(|(g, u)| *g = swiglu_oai(*g, *u)),
    }
}
