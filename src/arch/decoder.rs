//! The decoder every supported architecture runs: embedding → blocks of (attention, gated
//! feed-forward or mixture of experts), each with RMS norms and residuals → final norm →
//! output projection.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};

use super::attention::{self, rms_norm, KvCache, Spec};
use super::{Activation, Config, Family};
use crate::error::{Error, Result};
use crate::gguf::{ggml_type_block, Gguf, TensorInfo};
use crate::kernels::{QEmbedding, QLinear, QMatrix};
use half::f16;

/// A model's weights, loaded once and shared by every generation on it.
pub struct Weights {
    config: Config,
    vocab_size: usize,
    embedding: QEmbedding,
    layers: Vec<Layer>,
    /// `[hidden]`
    output_norm: Vec<f32>,
    /// `(vocab, hidden)`; the embedding table itself when the file ties them.
    output: QLinear,
    forward_passes: AtomicU64,
}

struct Layer {
    /// `[hidden]` each.
    attn_norm: Vec<f32>,
    /// `(heads·head_dim, hidden)`, `(kv_heads·head_dim, hidden)`, `(kv_heads·value_dim, hidden)`.
    q: QLinear,
    k: QLinear,
    v: QLinear,
    /// `(hidden, heads·value_dim)`
    o: QLinear,
    /// Per-head RMS norms of queries and keys, `[head_dim]` (Qwen 3, Gemma 3).
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    /// Norms applied to the attention and feed-forward outputs before the residual (Gemma 3).
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    ffn: FeedForward,
    post_ffn_norm: Option<Vec<f32>>,
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

        let table = loader.matrix("token_embd.weight")?;
        let vocab_size = table.rows();
        if table.cols() != c.hidden {
            return Err(Error::InvalidTensor { name: "token_embd.weight".into(), reason: format!("rows of {}, expected the hidden width {}", table.cols(), c.hidden) });
        }
        let output = match loader.index.contains_key("output.weight") {
            true => loader.linear("output", Some(vocab_size), c.hidden)?,
            false => QLinear::new(table.clone(), None), // tied to the embedding
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
            let head_norm = |loader: &mut Loader<'_, R>, name: &str| -> Result<Option<Vec<f32>>> {
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
        let caches = (0..c.layers).map(|_| KvCache::new(c.kv_heads, capacity, c.head_dim, c.value_dim)).collect();
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
        let eps = c.eps as f32;
        let norm = |x: &[f32], w: &[f32]| {
            let mut y = x.to_vec();
            rms_norm(&mut y, w, eps);
            y
        };

        // x: [seq][hidden]
        let mut x = self.embedding.lookup(tokens)?;
        if let Some(scale) = c.embedding_scale {
            let scale = scale as f32;
            x.iter_mut().for_each(|v| *v *= scale);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let h = norm(&x, &layer.attn_norm);
            let mut a = self.attention(layer, i, &h, seq, &mut state.caches[i], pos)?;
            if let Some(n) = &layer.post_attn_norm {
                rms_norm(&mut a, n, eps);
            }
            add(&mut x, &a);
            let h = norm(&x, &layer.ffn_norm);
            let mut f = match &layer.ffn {
                FeedForward::Dense(mlp) => mlp.forward(&h, seq, c.activation)?,
                FeedForward::Experts { router, experts } => self.experts(router, experts, &h, seq)?,
            };
            if let Some(n) = &layer.post_ffn_norm {
                rms_norm(&mut f, n, eps);
            }
            add(&mut x, &f);
        }
        state.len += seq;

        // Only the last position's logits are needed to pick the next token.
        let last = norm(&x[(seq - 1) * c.hidden..], &self.output_norm);
        self.output.forward(&last, 1)
    }

    /// Self-attention of layer `index` for `h` (`[seq][hidden]`) at positions `pos..pos+seq`.
    fn attention(&self, layer: &Layer, index: usize, h: &[f32], seq: usize, cache: &mut KvCache, pos: usize) -> Result<Vec<f32>> {
        let c = &self.config;
        let eps = c.eps as f32;
        // [seq][heads][head_dim], [seq][kv_heads][head_dim], [seq][kv_heads][value_dim]
        let mut q = layer.q.forward(h, seq)?;
        let mut k = layer.k.forward(h, seq)?;
        let v = layer.v.forward(h, seq)?;
        if let Some(n) = &layer.q_norm {
            rms_norm(&mut q, n, eps);
        }
        if let Some(n) = &layer.k_norm {
            rms_norm(&mut k, n, eps);
        }
        let local = c.is_local(index);
        let base = if local { c.rope_base_local } else { c.rope_base } as f32;
        attention::rope(&mut q, c.heads, c.head_dim, c.rope_dims, pos, base, c.rope_style);
        attention::rope(&mut k, c.kv_heads, c.head_dim, c.rope_dims, pos, base, c.rope_style);
        // Gemma scales the queries before the product (llama.cpp does so too); the others scale
        // each product. The two differ in rounding, not in value.
        let scale = c.attention_scale as f32;
        let product_scale = if c.family == Family::Gemma3 {
            q.iter_mut().for_each(|v| *v *= scale);
            1.0
        } else {
            scale
        };
        cache.append(&k, &v, seq)?;
        let window = if local { c.sliding_window.map(|(w, _)| w) } else { None };
        let out = attention::attend(&q, seq, pos, cache, &Spec { heads: c.heads, scale: product_scale, window });
        layer.o.forward(&out, seq)
    }

    /// Mixture of experts for `x` (`[seq][hidden]`): each token's router softmax picks its top
    /// experts, whose outputs are summed with the (renormalised) router weights.
    fn experts(&self, router: &QLinear, experts: &[Mlp], x: &[f32], seq: usize) -> Result<Vec<f32>> {
        let Some(spec) = self.config.experts else { return Err(Error::Compute("experts without an expert count".into())) };
        let hidden = self.config.hidden;
        let logits = router.forward(x, seq)?;
        let mut out = vec![0f32; seq * hidden];
        let mut order: Vec<usize> = Vec::with_capacity(experts.len());
        for (token, logits) in logits.chunks_exact(experts.len()).enumerate() {
            let probs = softmax(logits);
            order.clear();
            order.extend(0..probs.len());
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let chosen = &order[..spec.used];
            let sum: f32 = chosen.iter().map(|&e| probs[e]).sum();
            let row = &x[token * hidden..(token + 1) * hidden];
            let out = &mut out[token * hidden..(token + 1) * hidden];
            for &e in chosen {
                let weight = if spec.normalize { probs[e] / sum } else { probs[e] };
                let y = experts[e].forward(row, 1, self.config.activation)?;
                for (o, y) in out.iter_mut().zip(&y) {
                    *o += y * weight;
                }
            }
        }
        Ok(out)
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Softmax of `x`, summed in f64 as llama.cpp sums it.
fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = exps.iter().map(|&e| e as f64).sum();
    let inv = (1.0 / sum) as f32;
    exps.into_iter().map(|e| e * inv).collect()
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
    let y = 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh());
    f16::from_f32(y).to_f32()
}

impl Mlp {
    fn forward(&self, x: &[f32], seq: usize, activation: Activation) -> Result<Vec<f32>> {
        let mut gate = self.gate.forward(x, seq)?;
        let up = self.up.forward(x, seq)?;
        for (g, u) in gate.iter_mut().zip(&up) {
            *g = match activation {
                Activation::Silu => *g / (1.0 + (-*g).exp()) * u,
                Activation::GeluTanh => gelu(*g) * u,
            };
        }
        self.down.forward(&gate, seq)
    }
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

    /// The raw bytes, ggml type and shape (outermost first) of a tensor.
    fn raw(&mut self, name: &str) -> Result<(Vec<u8>, u32, Vec<usize>)> {
        let info = self.info(name)?.clone();
        let (block_elems, block_bytes) = ggml_type_block(info.ggml_type)
            .ok_or_else(|| Error::InvalidTensor { name: name.to_string(), reason: format!("ggml type {} is not supported", info.ggml_type) })?;
        // The header reader checked that these sizes fit in the file.
        let size = (info.elements() / block_elems * block_bytes) as usize;
        self.reader.seek(SeekFrom::Start(self.gguf.data_offset + info.offset))?;
        let mut bytes = vec![0u8; size];
        self.reader.read_exact(&mut bytes).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Truncated { what: format!("the data of tensor `{name}`") },
            _ => Error::Io(e),
        })?;
        // ggml lists dimensions innermost first; shapes here are outermost first.
        let shape = info.dims.iter().rev().map(|&d| d as usize).collect();
        Ok((bytes, info.ggml_type, shape))
    }

    /// A 2-D tensor as a matrix `(rows, cols)`.
    fn matrix(&mut self, name: &str) -> Result<QMatrix> {
        let (bytes, ggml_type, shape) = self.raw(name)?;
        let [rows, cols] = shape[..] else {
            return Err(Error::InvalidTensor { name: name.into(), reason: format!("shape {shape:?} is not 2-D") });
        };
        QMatrix::new(ggml_type, bytes, rows, cols).map_err(|e| Error::InvalidTensor { name: name.into(), reason: e.to_string() })
    }

    /// A 1-D tensor of `len` floats (norm weights, biases), dequantized if stored quantized.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (bytes, ggml_type, shape) = self.raw(name)?;
        if shape != [len] {
            return Err(Error::InvalidTensor { name: name.into(), reason: format!("shape {shape:?}, expected [{len}]") });
        }
        let m = QMatrix::new(ggml_type, bytes, 1, len).map_err(|e| Error::InvalidTensor { name: name.into(), reason: e.to_string() })?;
        m.to_f32()
    }

    fn opt_vector(&mut self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
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
        let w = self.matrix(&weight_name)?;
        let (rows, cols) = (w.rows(), w.cols());
        if out.is_some_and(|o| o != rows) || (inputs != 0 && inputs != cols) {
            return Err(Error::InvalidTensor {
                name: weight_name,
                reason: format!("shape ({rows}, {cols}), expected ({}, {})", out.map_or("any".into(), |o| o.to_string()), if inputs == 0 { "any".into() } else { inputs.to_string() }),
            });
        }
        let bias = self.opt_vector(&format!("{name}.bias"), rows)?;
        Ok(QLinear::new(w, bias))
    }

    /// The experts of layer `layer`: `ffn_{gate,up,down}_exps` hold every expert's matrix in
    /// one 3-D tensor, `(experts, out, in)`; each expert's slice becomes its own matrix.
    fn experts(&mut self, layer: usize, count: usize, hidden: usize) -> Result<Vec<Mlp>> {
        let mut split = |part: &str| -> Result<Vec<QLinear>> {
            let name = format!("blk.{layer}.ffn_{part}_exps.weight");
            let (bytes, ggml_type, shape) = self.raw(&name)?;
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
                    let m = QMatrix::new(ggml_type, chunk.to_vec(), rows, cols).map_err(|e| Error::InvalidTensor { name: name.clone(), reason: e.to_string() })?;
                    Ok(QLinear::new(m, None))
                })
                .collect()
        };
        let gates = split("gate")?;
        let ups = split("up")?;
        let downs = split("down")?;
        Ok(gates.into_iter().zip(ups).zip(downs).map(|((gate, up), down)| Mlp { gate, up, down }).collect())
    }
}

