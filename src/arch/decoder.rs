//! The decoder every supported architecture runs: embedding → blocks of (attention, gated
//! feed-forward or mixture of experts), each with RMS norms and residuals → final norm →
//! output projection.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::ops::{rms_norm, softmax_last_dim};

use super::kv_cache::KvCache;
use super::{Activation, Config, RopeStyle};
use crate::error::{Error, Result};
use crate::gguf::{ggml_type_block, Gguf, TensorInfo};
use crate::kernels::{QEmbedding, QLinear};

/// A model's weights, loaded once and shared by every generation on it.
pub struct Weights {
    config: Config,
    vocab_size: usize,
    embedding: QEmbedding,
    layers: Vec<Layer>,
    /// `[hidden]`
    output_norm: Tensor,
    /// `(vocab, hidden)`; the embedding table itself when the file ties them.
    output: QLinear,
    forward_passes: AtomicU64,
}

struct Layer {
    /// `[hidden]` each.
    attn_norm: Tensor,
    /// `(heads·head_dim, hidden)`, `(kv_heads·head_dim, hidden)`, `(kv_heads·value_dim, hidden)`.
    q: QLinear,
    k: QLinear,
    v: QLinear,
    /// `(hidden, heads·value_dim)`
    o: QLinear,
    /// Per-head RMS norms of queries and keys, `[head_dim]` (Qwen 3, Gemma 3).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// Norms applied to the attention and feed-forward outputs before the residual (Gemma 3).
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    ffn: FeedForward,
    post_ffn_norm: Option<Tensor>,
}

/// A gated MLP: `down(act(gate(x)) * up(x))`; gate/up `(ffn, hidden)`, down `(hidden, ffn)`.
struct Mlp {
    gate: QLinear,
    up: QLinear,
    down: QLinear,
}

enum FeedForward {
    Dense(Mlp),
    /// `router`: `(experts, hidden)`; each token goes to its top experts.
    Experts { router: QLinear, experts: Vec<Mlp> },
}

/// The per-generation state: the KV cache of every layer.
pub struct State {
    caches: Vec<KvCache>,
    len: usize,
    capacity: usize,
}

impl State {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position from `len` on, keeping the prefix.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for cache in &mut self.caches {
            cache.truncate(len);
        }
    }
}

impl Weights {
    /// Loads the weights the header describes from `reader`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] / [`Error::InvalidTensor`] for an absent or misshapen tensor,
    /// [`Error::Truncated`] / [`Error::Io`] when the data cannot be read, and the metadata
    /// errors of [`Config::from_gguf`].
    pub fn load<R: Read + Seek>(gguf: &Gguf, reader: &mut R) -> Result<Weights> {
        let config = Config::from_gguf(gguf)?;
        let mut loader = Loader { gguf, reader, index: gguf.tensors.iter().map(|t| (t.name.as_str(), t)).collect() };
        let c = &config;

        let table = loader.qtensor("token_embd.weight")?;
        let (vocab_size, width) = table.shape().dims2()?;
        if width != c.hidden {
            return Err(Error::InvalidTensor { name: "token_embd.weight".into(), reason: format!("rows of {width}, expected the hidden width {}", c.hidden) });
        }
        let output = match loader.opt_qtensor("output.weight")? {
            Some(w) => QLinear::new(w, None)?,
            None => QLinear::new(table.clone(), None)?, // tied to the embedding
        };
        let output_norm = loader.vector("output_norm.weight", c.hidden)?;

        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = |name: &str| format!("blk.{i}.{name}");
            let ffn = match c.experts {
                None => FeedForward::Dense(Mlp {
                    gate: loader.linear(&p("ffn_gate"), None, c.hidden)?,
                    up: loader.linear(&p("ffn_up"), None, c.hidden)?,
                    down: loader.linear(&p("ffn_down"), Some(c.hidden), 0)?,
                }),
                Some(e) => FeedForward::Experts { router: loader.linear(&p("ffn_gate_inp"), Some(e.count), c.hidden)?, experts: loader.experts(i, e.count, c.hidden)? },
            };
            let head_norm = |loader: &mut Loader<'_, R>, name: &str| -> Result<Option<Tensor>> {
                if loader.index.contains_key(p(name).as_str()) {
                    Ok(Some(loader.vector(&p(name), c.head_dim)?))
                } else {
                    Ok(None)
                }
            };
            let q_norm = head_norm(&mut loader, "attn_q_norm.weight")?;
            let k_norm = head_norm(&mut loader, "attn_k_norm.weight")?;
            let post_attn_norm = loader.opt_vector(&p("post_attention_norm.weight"), c.hidden)?;
            let post_ffn_norm = loader.opt_vector(&p("post_ffw_norm.weight"), c.hidden)?;
            layers.push(Layer {
                attn_norm: loader.vector(&p("attn_norm.weight"), c.hidden)?,
                q: loader.linear(&p("attn_q"), Some(c.heads * c.head_dim), c.hidden)?,
                k: loader.linear(&p("attn_k"), Some(c.kv_heads * c.head_dim), c.hidden)?,
                v: loader.linear(&p("attn_v"), Some(c.kv_heads * c.value_dim), c.hidden)?,
                o: loader.linear(&p("attn_output"), Some(c.hidden), c.heads * c.value_dim)?,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm: loader.vector(&p("ffn_norm.weight"), c.hidden)?,
                ffn,
                post_ffn_norm,
            });
        }
        Ok(Weights { config, vocab_size, embedding: QEmbedding::new(table), layers, output_norm, output, forward_passes: AtomicU64::new(0) })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Rows of the embedding table (the model's vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Forward passes run so far on these weights, by every generation.
    pub fn forward_passes(&self) -> u64 {
        self.forward_passes.load(Ordering::Relaxed)
    }

    /// A fresh state whose KV cache holds `capacity` positions (at most the model's context).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `capacity` is 0 or beyond the context length.
    pub fn new_state(&self, capacity: usize) -> Result<State> {
        let c = &self.config;
        if capacity == 0 || capacity > c.context_length {
            return Err(Error::InvalidParameter {
                name: "context_length",
                reason: format!("{capacity} is not in 1..={} (the model's context length)", c.context_length),
            });
        }
        let caches = (0..c.layers).map(|_| KvCache::new(c.kv_heads, capacity, c.head_dim, c.value_dim)).collect::<Result<_>>()?;
        Ok(State { caches, len: 0, capacity })
    }

    /// Runs `tokens` at the next positions of `state` and returns the logits after the last one
    /// (`vocab_size` floats).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] for an id outside the vocabulary, [`Error::PromptTooLong`]
    /// when the tokens do not fit in the cache, [`Error::Compute`] if Candle fails.
    pub fn forward(&self, state: &mut State, tokens: &[u32]) -> Result<Vec<f32>> {
        let c = &self.config;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(Error::TokenOutOfRange { id: bad.into(), vocab_size: self.vocab_size, what: "model input".into() });
        }
        if tokens.is_empty() {
            return Err(Error::InvalidParameter { name: "tokens", reason: "a forward pass needs at least one token".into() });
        }
        if state.len + tokens.len() > state.capacity {
            return Err(Error::PromptTooLong { tokens: state.len + tokens.len(), context: state.capacity });
        }
        self.forward_passes.fetch_add(1, Ordering::Relaxed);
        let pos = state.len;
        let seq = tokens.len();

        // x: [seq, hidden]
        let mut x = self.embedding.lookup(tokens)?;
        if let Some(scale) = c.embedding_scale {
            x = (x * scale)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, c.eps as f32)?;
            let mut a = self.attention(layer, i, &h, &mut state.caches[i], pos)?;
            if let Some(n) = &layer.post_attn_norm {
                a = rms_norm(&a, n, c.eps as f32)?;
            }
            x = (x + a)?;
            let h = rms_norm(&x, &layer.ffn_norm, c.eps as f32)?;
            let mut f = match &layer.ffn {
                FeedForward::Dense(mlp) => mlp.forward(&h, c.activation)?,
                FeedForward::Experts { router, experts } => self.experts(router, experts, &h)?,
            };
            if let Some(n) = &layer.post_ffn_norm {
                f = rms_norm(&f, n, c.eps as f32)?;
            }
            x = (x + f)?;
        }
        state.len += seq;

        // Only the last position's logits are needed to pick the next token.
        let last = x.narrow(0, seq - 1, 1)?;
        let last = rms_norm(&last, &self.output_norm, c.eps as f32)?;
        Ok(self.output.forward(&last)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Self-attention of layer `index` for `h` (`[seq, hidden]`) at positions `pos..pos+seq`.
    fn attention(&self, layer: &Layer, index: usize, h: &Tensor, cache: &mut KvCache, pos: usize) -> Result<Tensor> {
        let c = &self.config;
        let seq = h.dim(0)?;
        let eps = c.eps as f32;
        let mut q = layer.q.forward(h)?.reshape((seq, c.heads, c.head_dim))?;
        let mut k = layer.k.forward(h)?.reshape((seq, c.kv_heads, c.head_dim))?;
        let v = layer.v.forward(h)?.reshape((seq, c.kv_heads, c.value_dim))?;
        if let Some(n) = &layer.q_norm {
            q = rms_norm(&q.contiguous()?, n, eps)?;
        }
        if let Some(n) = &layer.k_norm {
            k = rms_norm(&k.contiguous()?, n, eps)?;
        }
        // [seq, heads, dim] → [heads, seq, dim]
        let q = q.transpose(0, 1)?.contiguous()?;
        let k = k.transpose(0, 1)?.contiguous()?;
        let v = v.transpose(0, 1)?.contiguous()?;
        let local = c.is_local(index);
        let (cos, sin) = rope_tables(pos, seq, c.rope_dims, if local { c.rope_base_local } else { c.rope_base })?;
        let q = rope(&q, &cos, &sin, c)?;
        let k = rope(&k, &cos, &sin, c)?;

        // keys, values: [kv_heads, total, dim]
        let (keys, values) = cache.append(&k, &v)?;
        let total = keys.dim(1)?;
        // Grouped-query attention: the `group` query heads of one KV head become extra rows.
        let group = c.heads / c.kv_heads;
        let q = q.reshape((c.kv_heads, group * seq, c.head_dim))?;
        let mut scores = (q.matmul(&keys.t()?)? * c.attention_scale)?; // [kv_heads, group·seq, total]
        let window = if local { c.sliding_window.map(|(w, _)| w) } else { None };
        if let Some(mask) = attention_mask(seq, pos, total, window)? {
            scores = scores.reshape((c.kv_heads, group, seq, total))?.broadcast_add(&mask)?.reshape((c.kv_heads, group * seq, total))?;
        }
        let probs = softmax_last_dim(&scores)?;
        let out = probs.matmul(&values.contiguous()?)?; // [kv_heads, group·seq, value_dim]
        let out = out.reshape((c.heads, seq, c.value_dim))?.transpose(0, 1)?.reshape((seq, c.heads * c.value_dim))?;
        layer.o.forward(&out)
    }

    /// Mixture of experts for `x` (`[seq, hidden]`): each token's router softmax picks its top
    /// experts, whose outputs are summed with the (renormalised) router weights.
    fn experts(&self, router: &QLinear, experts: &[Mlp], x: &Tensor) -> Result<Tensor> {
        let Some(spec) = self.config.experts else { return Err(Error::Compute("experts without an expert count".into())) };
        let probs = softmax_last_dim(&router.forward(x)?)?.to_vec2::<f32>()?;
        // For each expert, the tokens routed to it and their weights.
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); experts.len()];
        let mut order: Vec<usize> = Vec::with_capacity(experts.len());
        for (token, p) in probs.iter().enumerate() {
            order.clear();
            order.extend(0..p.len());
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let chosen = &order[..spec.used];
            let sum: f32 = chosen.iter().map(|&e| p[e]).sum();
            for &e in chosen {
                routed[e].0.push(token as u32);
                routed[e].1.push(if spec.normalize { p[e] / sum } else { p[e] });
            }
        }
        let mut out = x.zeros_like()?;
        for (mlp, (tokens, weights)) in experts.iter().zip(routed) {
            if tokens.is_empty() {
                continue;
            }
            let n = tokens.len();
            let rows = Tensor::from_vec(tokens, n, x.device())?;
            let y = mlp.forward(&x.index_select(&rows, 0)?, self.config.activation)?;
            let y = y.broadcast_mul(&Tensor::from_vec(weights, (n, 1), x.device())?)?;
            out = out.index_add(&rows, &y, 0)?;
        }
        Ok(out)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        let gate = self.gate.forward(x)?;
        let gate = match activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        self.down.forward(&(gate * self.up.forward(x)?)?)
    }
}

/// cos and sin of `position · base^(-2i/dims)` for the positions `pos..pos+seq`:
/// `[seq, dims/2]` each.
fn rope_tables(pos: usize, seq: usize, dims: usize, base: f64) -> Result<(Tensor, Tensor)> {
    let half = dims / 2;
    let mut cos = Vec::with_capacity(seq * half);
    let mut sin = Vec::with_capacity(seq * half);
    for p in pos..pos + seq {
        for i in 0..half {
            let angle = p as f64 * base.powf(-2.0 * i as f64 / dims as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((Tensor::from_vec(cos, (seq, half), &Device::Cpu)?, Tensor::from_vec(sin, (seq, half), &Device::Cpu)?))
}

/// Rotates the first `rope_dims` dimensions of every head of `x` (`[heads, seq, head_dim]`).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, c: &Config) -> Result<Tensor> {
    let rotate = |x: &Tensor| -> Result<Tensor> {
        let x = x.unsqueeze(0)?.contiguous()?;
        let y = match c.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
            RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, cos, sin)?,
        };
        Ok(y.squeeze(0)?)
    };
    if c.rope_dims == c.head_dim {
        return rotate(x);
    }
    let rotated = rotate(&x.narrow(D::Minus1, 0, c.rope_dims)?)?;
    let rest = x.narrow(D::Minus1, c.rope_dims, c.head_dim - c.rope_dims)?;
    Ok(Tensor::cat(&[&rotated, &rest], D::Minus1)?)
}

/// The additive mask (`[seq, total]`, 0 or -inf) for queries at `pos..pos+seq` over keys
/// `0..total`: causal, and within `window` positions when given. `None` when nothing is masked.
fn attention_mask(seq: usize, pos: usize, total: usize, window: Option<usize>) -> Result<Option<Tensor>> {
    let allowed = |i: usize, j: usize| j <= pos + i && window.is_none_or(|w| pos + i - j < w);
    if seq == 1 && (0..total).all(|j| allowed(0, j)) {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..seq).flat_map(|i| (0..total).map(move |j| if allowed(i, j) { 0.0 } else { f32::NEG_INFINITY })).collect();
    Ok(Some(Tensor::from_vec(mask, (seq, total), &Device::Cpu)?))
}

/// Reads tensors by name from the file.
struct Loader<'a, R> {
    gguf: &'a Gguf,
    reader: &'a mut R,
    index: HashMap<&'a str, &'a TensorInfo>,
}

impl<R: Read + Seek> Loader<'_, R> {
    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.index.get(name).copied().ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }

    /// The raw bytes and candle type of a tensor.
    fn raw(&mut self, name: &str) -> Result<(Vec<u8>, GgmlDType, Vec<usize>)> {
        let info = self.info(name)?.clone();
        let invalid = |reason: String| Error::InvalidTensor { name: name.to_string(), reason };
        let dtype = ggml_dtype(info.ggml_type).ok_or_else(|| invalid(format!("ggml type {} is not supported", info.ggml_type)))?;
        let (block_elems, block_bytes) = ggml_type_block(info.ggml_type).ok_or_else(|| invalid(format!("ggml type {} is not supported", info.ggml_type)))?;
        // The header reader checked that these sizes fit in the file.
        let size = (info.elements() / block_elems * block_bytes) as usize;
        self.reader.seek(SeekFrom::Start(self.gguf.data_offset + info.offset))?;
        let mut bytes = vec![0u8; size];
        self.reader.read_exact(&mut bytes).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Truncated { what: format!("the data of tensor `{name}`") },
            _ => Error::Io(e),
        })?;
        // ggml lists dimensions innermost first; candle outermost first.
        let shape = info.dims.iter().rev().map(|&d| d as usize).collect();
        Ok((bytes, dtype, shape))
    }

    fn qtensor(&mut self, name: &str) -> Result<Arc<QTensor>> {
        let (bytes, dtype, shape) = self.raw(name)?;
        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
        Ok(Arc::new(QTensor::new(storage, shape)?))
    }

    fn opt_qtensor(&mut self, name: &str) -> Result<Option<Arc<QTensor>>> {
        if self.index.contains_key(name) {
            self.qtensor(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A 1-D tensor of `len` floats (norm weights, biases), dequantized if stored quantized.
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        let t = self.qtensor(name)?;
        if t.shape().elem_count() != len || t.shape().rank() != 1 {
            return Err(Error::InvalidTensor { name: name.into(), reason: format!("shape {:?}, expected [{len}]", t.shape().dims()) });
        }
        Ok(t.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?)
    }

    fn opt_vector(&mut self, name: &str, len: usize) -> Result<Option<Tensor>> {
        if self.index.contains_key(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// `<name>.weight` (and `<name>.bias` if present) as a linear layer; `out` and `inputs`
    /// are checked when given (`None` / 0 take what the file has).
    fn linear(&mut self, name: &str, out: Option<usize>, inputs: usize) -> Result<QLinear> {
        let weight_name = format!("{name}.weight");
        let w = self.qtensor(&weight_name)?;
        let (rows, cols) = w.shape().dims2().map_err(|_| Error::InvalidTensor { name: weight_name.clone(), reason: format!("shape {:?} is not 2-D", w.shape().dims()) })?;
        if out.is_some_and(|o| o != rows) || (inputs != 0 && inputs != cols) {
            return Err(Error::InvalidTensor {
                name: weight_name,
                reason: format!("shape ({rows}, {cols}), expected ({}, {})", out.map_or("any".into(), |o| o.to_string()), if inputs == 0 { "any".into() } else { inputs.to_string() }),
            });
        }
        let bias_name = format!("{name}.bias");
        let bias = self.opt_vector(&bias_name, rows)?;
        QLinear::new(w, bias)
    }

    /// The experts of layer `layer`: `ffn_{gate,up,down}_exps` hold every expert's matrix in
    /// one 3-D tensor, `(experts, out, in)`; each expert's slice becomes its own matrix.
    fn experts(&mut self, layer: usize, count: usize, hidden: usize) -> Result<Vec<Mlp>> {
        let mut split = |part: &str| -> Result<Vec<QLinear>> {
            let name = format!("blk.{layer}.ffn_{part}_exps.weight");
            let (bytes, dtype, shape) = self.raw(&name)?;
            let [n, rows, cols] = shape[..] else {
                return Err(Error::InvalidTensor { name, reason: format!("shape {shape:?} is not 3-D") });
            };
            let expected_in = if part == "down" { cols } else { hidden };
            if n != count || cols != expected_in || (part == "down" && rows != hidden) {
                return Err(Error::InvalidTensor { name, reason: format!("shape {shape:?} does not fit {count} experts of width {hidden}") });
            }
            let per_expert = bytes.len() / n;
            bytes
                .chunks_exact(per_expert)
                .map(|chunk| {
                    let storage = QStorage::from_data(Cow::Borrowed(chunk), &Device::Cpu, dtype)?;
                    QLinear::new(Arc::new(QTensor::new(storage, (rows, cols))?), None)
                })
                .collect()
        };
        let gates = split("gate")?;
        let ups = split("up")?;
        let downs = split("down")?;
        Ok(gates.into_iter().zip(ups).zip(downs).map(|((gate, up), down)| Mlp { gate, up, down }).collect())
    }
}

/// The candle type of a ggml type id.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
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

    #[test]
    fn mask_is_causal_and_windowed() {
        let m = attention_mask(3, 2, 5, None).unwrap().unwrap().to_vec2::<f32>().unwrap();
        let allowed: Vec<Vec<bool>> = m.iter().map(|r| r.iter().map(|v| *v == 0.0).collect()).collect();
        assert_eq!(allowed[0], [true, true, true, false, false]);
        assert_eq!(allowed[2], [true, true, true, true, true]);
        let m = attention_mask(1, 4, 5, Some(2)).unwrap().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0].iter().map(|v| *v == 0.0).collect::<Vec<_>>(), [false, false, false, true, true]);
        assert!(attention_mask(1, 4, 5, None).unwrap().is_none());
    }
}
