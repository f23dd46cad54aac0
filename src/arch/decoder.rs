//! The decoder every supported architecture runs: embedding → blocks of (attention, gated
//! feed-forward or mixture of experts), each with RMS norms and residuals → final norm →
//! output projection.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};

use super::attention::{Rope, Spec};
use super::{math, Activation, Config, Family, Gating};
use crate::backend::{Backend, CacheSpec, Cpu, KvStore, Products};
use crate::bytes::Bytes;
use crate::error::{Error, Result};
use crate::gguf::{ggml_type_block, Gguf, TensorInfo};
use crate::kernels::QMatrix;

/// A model's weights, placed on a [`Backend`] once and shared by every generation on it.
pub struct Weights<B: Backend = Cpu> {
    backend: B,
    config: Config,
    vocab_size: usize,
    /// `(vocab, hidden)`, looked up by token.
    embedding: B::Matrix,
    layers: Vec<Layer<B>>,
    /// `[hidden]`
    output_norm: B::Tensor,
    /// `(vocab, hidden)`; the embedding table itself when the file ties them.
    output: B::Matrix,
    forward_passes: AtomicU64,
}

struct Layer<B: Backend> {
    /// `[hidden]` each.
    attn_norm: B::Tensor,
    attention: Attention<B>,
    /// Norms applied to the attention and feed-forward outputs before the residual (Gemma 3).
    post_attn_norm: Option<B::Tensor>,
    ffn_norm: B::Tensor,
    ffn: FeedForward<B>,
    post_ffn_norm: Option<B::Tensor>,
}

enum Attention<B: Backend> {
    /// Grouped-query attention.
    Standard {
        /// `(heads·head_dim, hidden)`, `(kv_heads·head_dim, hidden)`, `(kv_heads·value_dim, hidden)`.
        q: B::Matrix,
        k: B::Matrix,
        v: B::Matrix,
        /// `(hidden, heads·value_dim)`
        o: B::Matrix,
        /// Per-head RMS norms of queries and keys, `[head_dim]` (Qwen 3, Gemma 3).
        q_norm: Option<B::Tensor>,
        k_norm: Option<B::Tensor>,
    },
    /// Multi-head latent attention (`deepseek2`).
    Latent {
        query: Query<B>,
        /// `(kv_rank + rope, hidden)`: the compressed key-value vector and the shared rotary key.
        kv_a: B::Matrix,
        /// `[kv_rank]`
        kv_a_norm: B::Tensor,
        kv_up: KvUp<B>,
        /// `(hidden, heads·value)`
        o: B::Matrix,
    },
}

/// How latent attention forms its queries, `heads·(nope + rope)` wide.
enum Query<B: Backend> {
    /// One projection `(heads·(nope+rope), hidden)`.
    Plain(B::Matrix),
    /// Down to `rank`, RMS norm, up: `(rank, hidden)`, `[rank]`, `(heads·(nope+rope), rank)`.
    LowRank { down: B::Matrix, norm: B::Tensor, up: B::Matrix },
}

/// How latent attention gets per-head keys and values from the compressed vector.
enum KvUp<B: Backend> {
    /// `attn_kv_b`: `(heads·(nope + value), kv_rank)`; attention runs on full heads.
    Combined(B::Matrix),
    /// `attn_k_b` / `attn_v_b`, one matrix per head: `(kv_rank, nope)` absorbed into the
    /// queries and `(value, kv_rank)` applied after attention; attention runs on the latent form.
    Split { k: Vec<B::Matrix>, v: Vec<B::Matrix> },
}

/// A gated MLP: `down(act(gate(x)) * up(x))`; gate/up `(ffn, hidden)`, down `(hidden, ffn)`.
pub struct Mlp<B: Backend> {
    pub(crate) gate: B::Matrix,
    pub(crate) up: B::Matrix,
    pub(crate) down: B::Matrix,
}

enum FeedForward<B: Backend> {
    Dense(Mlp<B>),
    Experts(Moe<B>),
}

/// A mixture of experts: `router` is `(experts, hidden)`; each token goes to its top experts
/// (chosen with `bias` added, when there is one) and through the shared experts. Run by
/// [`Backend::experts`].
pub struct Moe<B: Backend> {
    pub(crate) router: B::Matrix,
    pub(crate) bias: Option<Vec<f32>>,
    pub(crate) experts: Vec<Mlp<B>>,
    pub(crate) shared: Option<Mlp<B>>,
}

/// The per-generation state: the KV cache of every layer. Cloning copies the cache (a fork of
/// a conversation); the default state holds no position, and a forward pass on it fails.
pub struct State<B: Backend = Cpu> {
    caches: Vec<B::Cache>,
    len: usize,
    capacity: usize,
}

impl<B: Backend> Clone for State<B> {
    fn clone(&self) -> State<B> {
        State { caches: self.caches.clone(), len: self.len, capacity: self.capacity }
    }
}

impl<B: Backend> Default for State<B> {
    fn default() -> State<B> {
        State { caches: Vec::new(), len: 0, capacity: 0 }
    }
}

impl<B: Backend> State<B> {
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

    /// Bytes the KV cache takes per token, over all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.caches.iter().map(KvStore::bytes_per_position).sum()
    }

    /// Forgets every position from `len` on, keeping the prefix. Also brings every layer back
    /// to the state's length after a forward pass that failed half way.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for cache in &mut self.caches {
            cache.truncate(self.len);
        }
    }

    /// Makes room for `capacity` positions, keeping those filled (a session's cache grows as
    /// its conversation does). A smaller `capacity` changes nothing.
    ///
    /// # Errors
    /// [`Error::KvCacheTooLarge`] when the memory is not there; the layers grown before keep
    /// their larger room, and the state still holds what it held.
    pub fn grow(&mut self, capacity: usize) -> Result<()> {
        for cache in &mut self.caches {
            cache.grow(capacity)?;
        }
        self.capacity = self.capacity.max(capacity);
        Ok(())
    }

    /// The filled positions of every layer as bytes (f16, little-endian), for
    /// [`State::restore`].
    pub fn save(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len * self.kv_bytes_per_token());
        for cache in &self.caches {
            cache.save(&mut out);
        }
        out
    }

    /// Fills the first `len` positions from what [`State::save`] wrote for the same model,
    /// growing the cache when it is smaller.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `bytes` is not the size `len` positions of this
    /// model's cache take.
    pub fn restore(&mut self, len: usize, bytes: &[u8]) -> Result<()> {
        let invalid = || Error::InvalidParameter { name: "bytes", reason: format!("they do not hold {len} positions of this model's KV cache") };
        if len.checked_mul(self.kv_bytes_per_token()) != Some(bytes.len()) {
            return Err(invalid());
        }
        self.grow(len)?;
        let mut at = 0;
        for cache in &mut self.caches {
            at += cache.restore(len, &bytes[at..]).ok_or_else(invalid)?;
        }
        self.len = len;
        Ok(())
    }
}

impl Weights<Cpu> {
    /// Loads the weights the header describes from `reader`, each tensor read into a buffer of
    /// its own.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] / [`Error::InvalidTensor`] for an absent or misshapen tensor (or
    /// one in another shard of a split model), [`Error::Truncated`] / [`Error::Io`] when the
    /// data cannot be read, and the metadata errors of [`Config::from_gguf`].
    pub fn load<R: Read + Seek>(gguf: &Gguf, reader: &mut R) -> Result<Weights> {
        let base = gguf.data_offset;
        Weights::load_from(Cpu::default(), gguf, &mut |shard, offset, len| {
            if shard != 0 {
                return Err(std::io::Error::other(format!("the data is in shard {} of a split model: open the model from its files", shard + 1)));
            }
            reader.seek(SeekFrom::Start(base + offset))?;
            let mut bytes = vec![0u8; len];
            reader.read_exact(&mut bytes)?;
            Ok(bytes.into())
        })
    }

    /// Loads the weights the header describes from `file`, the whole GGUF file in memory. The
    /// tensors share its buffer rather than copy it. `progress(bytes, total)` reports how far
    /// into the file the tensors read so far reach.
    ///
    /// # Errors
    /// As [`Weights::load`].
    pub fn load_from_bytes(gguf: &Gguf, file: &Bytes, progress: &mut dyn FnMut(u64, u64)) -> Result<Weights> {
        Weights::load_from_files(gguf, &[(file.clone(), gguf.data_offset)], progress)
    }

    /// Loads the weights the header describes from the files of a model in memory (or memory
    /// mapped): `files[i]` is shard `i` of a split model (the one file of others) with the
    /// offset of its tensor-data section. Tensors share the files' buffers rather than copy
    /// them, except those repacked for this CPU's kernels, at most [`REPACK_BUDGET`] bytes of
    /// them, whose file bytes are then released (see [`Bytes::release`]). `progress(bytes,
    /// total)` reports the bytes placed so far.
    ///
    /// # Errors
    /// As [`Weights::load`].
    pub fn load_from_files(gguf: &Gguf, files: &[(Bytes, u64)], progress: &mut dyn FnMut(u64, u64)) -> Result<Weights> {
        Weights::place(Cpu::default(), gguf, files, progress)
    }
}

impl<B: Backend> Weights<B> {
    /// Places the weights the header describes, from the files of a model in memory (as
    /// [`Weights::load_from_files`] reads them), on `backend`.
    ///
    /// # Errors
    /// As [`Weights::load`], and the backend's when it cannot hold a tensor.
    pub fn place(backend: B, gguf: &Gguf, files: &[(Bytes, u64)], progress: &mut dyn FnMut(u64, u64)) -> Result<Weights<B>> {
        let total = files.iter().map(|(f, _)| f.len() as u64).sum();
        let truncated = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        // Tensors are placed in the order the model needs them, not in file order: report the
        // header and the bytes placed so far, which only grows.
        let mut placed = gguf.data_offset;
        Weights::load_from(backend, gguf, &mut |shard, offset, len| {
            let (file, data_offset) = files.get(shard).ok_or_else(|| std::io::Error::other(format!("shard {} of the model was not given", shard + 1)))?;
            let start = data_offset.checked_add(offset).and_then(|at| usize::try_from(at).ok()).ok_or_else(truncated)?;
            let tensor = file.slice(start..start.checked_add(len).ok_or_else(truncated)?).ok_or_else(truncated)?;
            placed += len as u64;
            progress(placed.min(total), total);
            Ok(tensor)
        })
    }

    fn load_from(backend: B, gguf: &Gguf, source: &mut TensorSource<'_>) -> Result<Weights<B>> {
        let config = Config::from_gguf(gguf)?;
        let mut loader = Loader { backend: &backend, source, index: gguf.tensors.iter().map(|t| (t.name.as_str(), t)).collect() };
        let c = &config;

        // The embedding table is only looked up, row by row, unless the output layer is tied to
        // it: then it is a matrix of products like any other.
        let tied = !loader.index.contains_key("output.weight");
        let table = loader.matrix_placed("token_embd.weight", None, if tied { Products::OneRow } else { Products::InPlace })?;
        let (vocab_size, width) = backend.shape(&table);
        if width != c.hidden {
            return Err(Error::InvalidTensor { name: "token_embd.weight".into(), reason: format!("rows of {width}, expected the hidden width {}", c.hidden) });
        }
        let output = match tied {
            false => loader.linear_placed("output", Some(vocab_size), c.hidden, Products::OneRow)?,
            true => table.clone(), // the embedding table itself
        };
        let output_norm = loader.vector("output_norm.weight", c.hidden)?;

        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = |name: &str| format!("blk.{i}.{name}");
            let ffn = match c.experts {
                Some(e) if i >= e.leading_dense => FeedForward::Experts(Moe {
                    router: loader.linear(&p("ffn_gate_inp"), Some(e.count), c.hidden)?,
                    bias: loader.opt_values(&p("exp_probs_b.bias"), e.count)?,
                    experts: loader.experts(i, e.count, e.ffn, c.hidden)?,
                    shared: match e.shared {
                        0 => None,
                        n => Some(Mlp {
                            gate: loader.linear(&p("ffn_gate_shexp"), Some(n * e.ffn), c.hidden)?,
                            up: loader.linear(&p("ffn_up_shexp"), Some(n * e.ffn), c.hidden)?,
                            down: loader.linear(&p("ffn_down_shexp"), Some(c.hidden), n * e.ffn)?,
                        }),
                    },
                }),
                _ => FeedForward::Dense(Mlp {
                    gate: loader.linear(&p("ffn_gate"), None, c.hidden)?,
                    up: loader.linear(&p("ffn_up"), None, c.hidden)?,
                    down: loader.linear(&p("ffn_down"), Some(c.hidden), 0)?,
                }),
            };
            let attention = match c.latent {
                None => {
                    let head_norm = |loader: &mut Loader<'_, B>, name: &str| -> Result<Option<B::Tensor>> {
                        if loader.index.contains_key(p(name).as_str()) {
                            Ok(Some(loader.vector(&p(name), c.head_dim)?))
                        } else {
                            Ok(None)
                        }
                    };
                    Attention::Standard {
                        q_norm: head_norm(&mut loader, "attn_q_norm.weight")?,
                        k_norm: head_norm(&mut loader, "attn_k_norm.weight")?,
                        q: loader.linear(&p("attn_q"), Some(c.heads * c.head_dim), c.hidden)?,
                        k: loader.linear(&p("attn_k"), Some(c.kv_heads * c.head_dim), c.hidden)?,
                        v: loader.linear(&p("attn_v"), Some(c.kv_heads * c.value_dim), c.hidden)?,
                        o: loader.linear(&p("attn_output"), Some(c.hidden), c.heads * c.value_dim)?,
                    }
                }
                Some(l) => {
                    let q_width = c.heads * (l.nope + l.rope);
                    let query = if loader.index.contains_key(p("attn_q_a.weight").as_str()) {
                        let down = loader.linear(&p("attn_q_a"), None, c.hidden)?;
                        let rank = backend.shape(&down).0;
                        Query::LowRank { norm: loader.vector(&p("attn_q_a_norm.weight"), rank)?, up: loader.linear(&p("attn_q_b"), Some(q_width), rank)?, down }
                    } else {
                        Query::Plain(loader.linear(&p("attn_q"), Some(q_width), c.hidden)?)
                    };
                    let kv_up = if l.absorbed {
                        KvUp::Split {
                            k: loader.split(&p("attn_k_b.weight"), c.heads, l.kv_rank, l.nope)?,
                            v: loader.split(&p("attn_v_b.weight"), c.heads, l.value, l.kv_rank)?,
                        }
                    } else {
                        KvUp::Combined(loader.linear(&p("attn_kv_b"), Some(c.heads * (l.nope + l.value)), l.kv_rank)?)
                    };
                    Attention::Latent {
                        query,
                        kv_a: loader.linear(&p("attn_kv_a_mqa"), Some(l.kv_rank + l.rope), c.hidden)?,
                        kv_a_norm: loader.vector(&p("attn_kv_a_norm.weight"), l.kv_rank)?,
                        kv_up,
                        o: loader.linear(&p("attn_output"), Some(c.hidden), c.heads * l.value)?,
                    }
                }
            };
            let post_attn_norm = loader.opt_vector(&p("post_attention_norm.weight"), c.hidden)?;
            let post_ffn_norm = loader.opt_vector(&p("post_ffw_norm.weight"), c.hidden)?;
            layers.push(Layer {
                attn_norm: loader.vector(&p("attn_norm.weight"), c.hidden)?,
                attention,
                post_attn_norm,
                ffn_norm: loader.vector(&p("ffn_norm.weight"), c.hidden)?,
                ffn,
                post_ffn_norm,
            });
        }
        drop(loader);
        Ok(Weights { backend, config, vocab_size, embedding: table, layers, output_norm, output, forward_passes: AtomicU64::new(0) })
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
    pub fn new_state(&self, capacity: usize) -> Result<State<B>> {
        let c = &self.config;
        if capacity == 0 || capacity > c.context_length {
            return Err(Error::InvalidParameter {
                name: "context_length",
                reason: format!("{capacity} is not in 1..={} (the model's context length)", c.context_length),
            });
        }
        let values_in_keys = c.latent.is_some_and(|l| l.absorbed);
        // f16 keys (and values) for every layer, refused up front when the memory is not there.
        let width = c.head_dim + if values_in_keys { 0 } else { c.value_dim };
        let bytes = [c.layers, c.kv_heads, capacity, width, 2].iter().fold(1u64, |n, &d| n.saturating_mul(d as u64));
        let too_large = || Error::KvCacheTooLarge { positions: capacity, bytes };
        if bytes > isize::MAX as u64 || crate::platform::available_memory().is_some_and(|free| bytes > free) {
            return Err(too_large());
        }
        let spec = CacheSpec { kv_heads: c.kv_heads, capacity, head_dim: c.head_dim, value_dim: c.value_dim, values_in_keys };
        let caches = (0..c.layers).map(|_| self.backend.cache(&spec).map_err(|_| too_large())).collect::<Result<_>>()?;
        Ok(State { caches, len: 0, capacity })
    }

    /// Runs `tokens` at the next positions of `state` and returns the logits after the last one
    /// (`vocab_size` floats).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] for an id outside the vocabulary, [`Error::PromptTooLong`]
    /// when the tokens do not fit in the cache, [`Error::Compute`] if a product fails.
    pub fn forward(&self, state: &mut State<B>, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward_rows(state, tokens, tokens.len().saturating_sub(1))
    }

    /// As [`Weights::forward`], but returns the logits after each of `tokens[from..]`
    /// (`[tokens.len() - from][vocab_size]`): what scoring a text (perplexity) needs.
    ///
    /// # Errors
    /// As [`Weights::forward`]; [`Error::InvalidParameter`] when `from` is not below
    /// `tokens.len()`.
    pub fn forward_rows(&self, state: &mut State<B>, tokens: &[u32], from: usize) -> Result<Vec<f32>> {
        let c = &self.config;
        if from >= tokens.len().max(1) {
            return Err(Error::InvalidParameter { name: "from", reason: format!("row {from} of {} tokens", tokens.len()) });
        }
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
        let b = &self.backend;
        let pos = state.len;
        let eps = c.eps as f32;

        // x: [seq][hidden]
        let mut x = b.embed(&self.embedding, tokens)?;
        if let Some(scale) = c.embedding_scale {
            b.scale(&mut x, scale as f32)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let h = b.normed(&x, &layer.attn_norm, eps)?;
            let mut a = self.attention(layer, i, &h, &mut state.caches[i], pos)?;
            if let Some(n) = &layer.post_attn_norm {
                b.rms_norm(&mut a, n, eps)?;
            }
            b.add(&mut x, &a)?;
            let h = b.normed(&x, &layer.ffn_norm, eps)?;
            let mut f = match &layer.ffn {
                FeedForward::Dense(mlp) => mlp.forward(b, &h, c.activation)?,
                FeedForward::Experts(moe) => {
                    let Some(spec) = &c.experts else { return Err(Error::Compute("experts without an expert count".into())) };
                    b.experts(&h, moe, spec, c.activation)?
                }
            };
            if let Some(n) = &layer.post_ffn_norm {
                b.rms_norm(&mut f, n, eps)?;
            }
            b.add(&mut x, &f)?;
        }
        state.len += tokens.len();

        // Only the asked-for positions' logits (the last one, to pick the next token).
        let mut rows = b.tail(x, from)?;
        b.rms_norm(&mut rows, &self.output_norm, eps)?;
        b.read(&b.matmul(&rows, &self.output)?)
    }

    /// Self-attention of layer `index` for `h` (`[seq][hidden]`) at positions `pos..pos+seq`.
    fn attention(&self, layer: &Layer<B>, index: usize, h: &B::Tensor, cache: &mut B::Cache, pos: usize) -> Result<B::Tensor> {
        let (b, c) = (&self.backend, &self.config);
        let eps = c.eps as f32;
        let local = c.is_local(index);
        let rope = Rope {
            dims: c.rope_dims,
            base: if local { c.rope_base_local } else { c.rope_base } as f32,
            style: c.rope_style,
            yarn: c.yarn.map(|y| (1.0 / y.factor, Rope::yarn_correction(c.rope_dims, c.rope_base as f32, y.original_context))),
        };
        let spec = |scale: f32| Spec { heads: c.heads, scale, window: if local { c.sliding_window.map(|(w, _)| w) } else { None }, kernel: c.attention_kernel };
        let scale = c.attention_scale as f32;
        let (q, k, v, k_norm, q_norm, o) = match &layer.attention {
            Attention::Latent { query, kv_a, kv_a_norm, kv_up, o } => {
                return self.latent_attention(query, kv_a, kv_a_norm, kv_up, o, h, cache, pos, &rope, &spec(scale));
            }
            Attention::Standard { q, k, v, o, q_norm, k_norm } => (q, k, v, k_norm, q_norm, o),
        };
        // [seq][heads][head_dim], [seq][kv_heads][head_dim], [seq][kv_heads][value_dim]
        let mut q = b.matmul(h, q)?;
        let mut k = b.matmul(h, k)?;
        let v = b.matmul(h, v)?;
        if let Some(n) = q_norm {
            b.rms_norm(&mut q, n, eps)?;
        }
        if let Some(n) = k_norm {
            b.rms_norm(&mut k, n, eps)?;
        }
        b.rope(&mut q, c.heads, c.head_dim, pos, &rope)?;
        b.rope(&mut k, c.kv_heads, c.head_dim, pos, &rope)?;
        // Gemma scales the queries before the product (llama.cpp does so too); the others scale
        // each product. The two differ in rounding, not in value.
        let product_scale = if c.family == Family::Gemma3 {
            b.scale(&mut q, scale)?;
            1.0
        } else {
            scale
        };
        let out = b.attend(&q, &k, Some(&v), cache, pos, &spec(product_scale))?;
        b.matmul(&out, o)
    }

    /// Multi-head latent attention: queries (`nope` + `rope` per head), a compressed key-value
    /// vector and one rotary key shared by the heads; either decompressed into full heads
    /// (`KvUp::Combined`) or attended in latent form with the key up-projection absorbed into
    /// the queries and the value up-projection applied afterwards (`KvUp::Split`).
    #[allow(clippy::too_many_arguments)]
    fn latent_attention(&self, query: &Query<B>, kv_a: &B::Matrix, kv_a_norm: &B::Tensor, kv_up: &KvUp<B>, o: &B::Matrix, h: &B::Tensor, cache: &mut B::Cache, pos: usize, rope: &Rope, spec: &Spec) -> Result<B::Tensor> {
        let (b, c) = (&self.backend, &self.config);
        let Some(l) = c.latent else { return Err(Error::Compute("latent attention without latent sizes".into())) };
        let (heads, eps) = (c.heads, c.eps as f32);
        // q: [seq][heads][nope + rope]
        let q = match query {
            Query::Plain(w) => b.matmul(h, w)?,
            Query::LowRank { down, norm, up } => {
                let mut t = b.matmul(h, down)?;
                b.rms_norm(&mut t, norm, eps)?;
                b.matmul(&t, up)?
            }
        };
        let [q_nope, mut q_pe] = two(b.split(&q, &[l.nope, l.rope])?)?;
        // [seq][kv_rank + rope] → the normalised latent vector and the shared rotary key.
        let kv = b.matmul(h, kv_a)?;
        let [mut latent, mut k_pe] = two(b.split(&kv, &[l.kv_rank, l.rope])?)?;
        b.rope(&mut q_pe, heads, l.rope, pos, rope)?;
        b.rope(&mut k_pe, 1, l.rope, pos, rope)?;
        b.rms_norm(&mut latent, kv_a_norm, eps)?;

        // Each head's part then its rotary part, in one row per head.
        match kv_up {
            KvUp::Combined(w) => {
                // [seq][heads][nope + value]
                let kv = b.matmul(&latent, w)?;
                let [k_nope, v] = two(b.split(&kv, &[l.nope, l.value])?)?;
                let keys = b.join(&k_nope, l.nope, &k_pe, l.rope, heads)?;
                let queries = b.join(&q_nope, l.nope, &q_pe, l.rope, 1)?;
                let out = b.attend(&queries, &keys, Some(&v), cache, pos, spec)?;
                b.matmul(&out, o)
            }
            KvUp::Split { k, v } => {
                // Queries absorb each head's key up-projection: [seq][heads][kv_rank].
                let absorbed = b.matmul_heads(&q_nope, k)?;
                let keys = b.join(&latent, l.kv_rank, &k_pe, l.rope, 1)?;
                let queries = b.join(&absorbed, l.kv_rank, &q_pe, l.rope, 1)?;
                // [seq][heads][kv_rank], then each head's value up-projection: [seq][heads][value].
                let latent_out = b.attend(&queries, &keys, None, cache, pos, spec)?;
                b.matmul(&b.matmul_heads(&latent_out, v)?, o)
            }
        }
    }
}

/// The two parts of a [`Backend::split`] in two.
fn two<T>(parts: Vec<T>) -> Result<[T; 2]> {
    parts.try_into().map_err(|_| Error::Compute("a split into two gave another count of parts".into()))
}

/// The experts one token is routed to and their weights, best first, from its router
/// `logits`: softmax or sigmoid scores; the selection bias added for choosing (not for the
/// weights); group-limited routing keeping the groups whose two best scores sum highest; the
/// chosen weights renormalised and scaled as the file says.
pub(crate) fn route(spec: &super::Experts, bias: Option<&[f32]>, logits: &[f32]) -> Vec<(usize, f32)> {
    let probs = match spec.gating {
        Gating::Softmax => softmax(logits),
        Gating::Sigmoid => logits.iter().map(|&v| 1.0 / (1.0 + math::exp(-v))).collect(),
    };
    let mut selection = probs.clone();
    if let Some(bias) = bias {
        selection.iter_mut().zip(bias).for_each(|(s, b)| *s += b);
    }
    if let Some((groups, used_groups)) = spec.groups {
        // A group's score is the sum of its two best selection scores.
        let per = spec.count / groups;
        let score = |g: usize| {
            let best = top(&selection[g * per..(g + 1) * per], 2.min(per));
            best.iter().map(|&e| selection[g * per + e]).sum::<f32>()
        };
        let scores: Vec<f32> = (0..groups).map(score).collect();
        let keep = top(&scores, used_groups);
        for g in (0..groups).filter(|g| !keep.contains(g)) {
            selection[g * per..(g + 1) * per].iter_mut().for_each(|s| *s = f32::NEG_INFINITY);
        }
    }
    let chosen = top(&selection, spec.used);
    let mut weights: Vec<f32> = chosen.iter().map(|&e| probs[e]).collect();
    if spec.normalize {
        let sum = weights.iter().sum::<f32>().max(6.103_515_6e-5);
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    if spec.scale != 0.0 && spec.scale != 1.0 {
        weights.iter_mut().for_each(|w| *w *= spec.scale);
    }
    chosen.into_iter().zip(weights).collect()
}

/// The indices of the `k` largest values, largest first (lower index first among equals).
fn top(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// Softmax of `x`, summed in f64 as llama.cpp sums it.
fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|v| math::exp(v - max)).collect();
    let sum: f64 = exps.iter().map(|&e| e as f64).sum();
    let inv = (1.0 / sum) as f32;
    exps.into_iter().map(|e| e * inv).collect()
}

impl<B: Backend> Mlp<B> {
    /// `down(act(gate(x)) · up(x))` for the rows of `x`.
    pub(crate) fn forward(&self, b: &B, x: &B::Tensor, activation: Activation) -> Result<B::Tensor> {
        let gate = b.matmul(x, &self.gate)?;
        let up = b.matmul(x, &self.up)?;
        b.matmul(&b.gated(gate, &up, activation)?, &self.down)
    }
}

/// The data of a tensor: `(shard, offset into its data section, length)` to its bytes.
type TensorSource<'a> = dyn FnMut(usize, u64, usize) -> std::io::Result<Bytes> + 'a;

/// Reads tensors by name from the file and places them on the backend.
struct Loader<'a, B: Backend> {
    backend: &'a B,
    source: &'a mut TensorSource<'a>,
    index: HashMap<&'a str, &'a TensorInfo>,
}

impl<B: Backend> Loader<'_, B> {
    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.index.get(name).copied().ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }

    /// The raw bytes, ggml type and shape (outermost first) of a tensor.
    fn raw(&mut self, name: &str) -> Result<(Bytes, u32, Vec<usize>)> {
        let info = self.info(name)?.clone();
        let (block_elems, block_bytes) = ggml_type_block(info.ggml_type)
            .ok_or_else(|| Error::InvalidTensor { name: name.to_string(), reason: format!("ggml type {} is not supported", info.ggml_type) })?;
        // The header reader checked that these sizes fit in the file; they may still not fit
        // in a 32-bit usize (wasm32) when the file is memory-mapped or read in pieces.
        let too_large = || Error::InvalidTensor { name: name.to_string(), reason: format!("its {} elements do not fit in this target's memory", info.elements()) };
        let size = usize::try_from(info.elements() / block_elems * block_bytes).map_err(|_| too_large())?;
        let bytes = (self.source)(info.shard, info.offset, size).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Truncated { what: format!("the data of tensor `{name}`") },
            _ => Error::Io(e),
        })?;
        // ggml lists dimensions innermost first; shapes here are outermost first.
        let shape = info.dims.iter().rev().map(|&d| usize::try_from(d).map_err(|_| too_large())).collect::<Result<_>>()?;
        Ok((bytes, info.ggml_type, shape))
    }

    /// A 2-D tensor as a matrix `(rows, cols)` with `bias`, placed for the `products` it
    /// takes part in.
    fn matrix_placed(&mut self, name: &str, bias: Option<Vec<f32>>, products: Products) -> Result<B::Matrix> {
        let (bytes, ggml_type, shape) = self.raw(name)?;
        let [rows, cols] = shape[..] else {
            return Err(Error::InvalidTensor { name: name.into(), reason: format!("shape {shape:?} is not 2-D") });
        };
        self.place(name, ggml_type, bytes, rows, cols, bias, products)
    }

    #[allow(clippy::too_many_arguments)]
    fn place(&mut self, name: &str, ggml_type: u32, bytes: Bytes, rows: usize, cols: usize, bias: Option<Vec<f32>>, products: Products) -> Result<B::Matrix> {
        self.backend.matrix(ggml_type, bytes, rows, cols, bias, products).map_err(|e| Error::InvalidTensor { name: name.into(), reason: e.to_string() })
    }

    /// The values of a 1-D tensor of `len` floats (norm weights, biases), dequantized if stored
    /// quantized.
    fn values(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (bytes, ggml_type, shape) = self.raw(name)?;
        if shape != [len] {
            return Err(Error::InvalidTensor { name: name.into(), reason: format!("shape {shape:?}, expected [{len}]") });
        }
        let m = QMatrix::load(ggml_type, bytes, 1, len, false).map_err(|e| Error::InvalidTensor { name: name.into(), reason: e.to_string() })?;
        m.to_f32()
    }

    /// A 1-D tensor of `len` floats (norm weights) on the backend.
    fn vector(&mut self, name: &str, len: usize) -> Result<B::Tensor> {
        let values = self.values(name, len)?;
        self.backend.vector(values)
    }

    fn opt_values(&mut self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        if self.index.contains_key(name) {
            self.values(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    fn opt_vector(&mut self, name: &str, len: usize) -> Result<Option<B::Tensor>> {
        if self.index.contains_key(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// `<name>.weight` (and `<name>.bias` if present) as a linear layer; `out` and `inputs`
    /// are checked when given (`None` / 0 take what the file has).
    fn linear(&mut self, name: &str, out: Option<usize>, inputs: usize) -> Result<B::Matrix> {
        self.linear_placed(name, out, inputs, Products::Batched)
    }

    /// [`Loader::linear`] of a layer that takes part in `products`.
    fn linear_placed(&mut self, name: &str, out: Option<usize>, inputs: usize, products: Products) -> Result<B::Matrix> {
        let weight_name = format!("{name}.weight");
        let shape = self.info(&weight_name)?.dims.iter().rev().copied().collect::<Vec<_>>();
        let [rows, cols] = shape[..] else {
            return Err(Error::InvalidTensor { name: weight_name, reason: format!("shape {shape:?} is not 2-D") });
        };
        if out.is_some_and(|o| o as u64 != rows) || (inputs != 0 && inputs as u64 != cols) {
            return Err(Error::InvalidTensor {
                name: weight_name,
                reason: format!("shape ({rows}, {cols}), expected ({}, {})", out.map_or("any".into(), |o| o.to_string()), if inputs == 0 { "any".into() } else { inputs.to_string() }),
            });
        }
        let bias = match usize::try_from(rows) {
            Ok(rows) => self.opt_values(&format!("{name}.bias"), rows)?,
            Err(_) => None, // refused by `raw` as too large for this target
        };
        self.matrix_placed(&weight_name, bias, products)
    }

    /// The experts of layer `layer`: `ffn_{gate,up,down}_exps` hold every expert's matrix in
    /// one 3-D tensor; each expert's slice becomes its own matrix.
    fn experts(&mut self, layer: usize, count: usize, ffn: usize, hidden: usize) -> Result<Vec<Mlp<B>>> {
        let gates = self.split_placed(&format!("blk.{layer}.ffn_gate_exps.weight"), count, ffn, hidden, Products::InPlace)?;
        let ups = self.split_placed(&format!("blk.{layer}.ffn_up_exps.weight"), count, ffn, hidden, Products::InPlace)?;
        let downs = self.split_placed(&format!("blk.{layer}.ffn_down_exps.weight"), count, hidden, ffn, Products::InPlace)?;
        Ok(gates.into_iter().zip(ups).zip(downs).map(|((gate, up), down)| Mlp { gate, up, down }).collect())
    }

    /// A 3-D tensor `(count, rows, cols)` as `count` matrices.
    fn split(&mut self, name: &str, count: usize, rows: usize, cols: usize) -> Result<Vec<B::Matrix>> {
        self.split_placed(name, count, rows, cols, Products::Batched)
    }

    /// A 3-D tensor `(count, rows, cols)` as `count` matrices, placed for their `products`.
    fn split_placed(&mut self, name: &str, count: usize, rows: usize, cols: usize, products: Products) -> Result<Vec<B::Matrix>> {
        let (bytes, ggml_type, shape) = self.raw(name)?;
        if shape != [count, rows, cols] {
            return Err(Error::InvalidTensor { name: name.into(), reason: format!("shape {shape:?}, expected [{count}, {rows}, {cols}]") });
        }
        let per = bytes.len() / count;
        (0..count)
            .map(|i| {
                let part = bytes.slice(i * per..(i + 1) * per).ok_or_else(|| Error::InvalidTensor { name: name.into(), reason: "data does not split into equal parts".into() })?;
                self.place(name, ggml_type, part, rows, cols, None, products)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::QLinear;
    use crate::backend::cpu::Tensor;
    use crate::xorshift;
    use half::f16;

    /// A `(rows, cols)` matrix of random Q8_0 blocks with scales near 0.02.
    fn q8_0(rows: usize, cols: usize, next: &mut impl FnMut() -> u64) -> QMatrix {
        let mut data = Vec::new();
        for _ in 0..rows * cols / 32 {
            data.extend(f16::from_f32(0.02 / 64.0 * (1 + next() % 4) as f32).to_le_bytes());
            data.extend((0..32).map(|_| next() as u8));
        }
        QMatrix::new(8, data, rows, cols).expect("a well-formed matrix")
    }

    fn mlp(ffn: usize, hidden: usize, next: &mut impl FnMut() -> u64) -> Mlp<Cpu> {
        Mlp { gate: QLinear::new(q8_0(ffn, hidden, next), None), up: QLinear::new(q8_0(ffn, hidden, next), None), down: QLinear::new(q8_0(hidden, ffn, next), None) }
    }

    /// Experts grouped over a batch give every token exactly (to the bit) what it gets alone,
    /// token by token, for softmax and sigmoid gating, with and without the selection bias,
    /// groups and a shared expert.
    #[test]
    fn grouped_experts_equal_token_by_token() {
        let mut next = xorshift(0xE4_9E27_5A11_D00D);
        let (hidden, count, ffn, seq) = (64, 8, 32, 11);
        let unit = |next: &mut dyn FnMut() -> u64| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        for (gating, bias, groups, shared, normalize, scale) in
            [(Gating::Softmax, false, None, 0, true, 1.0), (Gating::Sigmoid, true, Some((4, 2)), 1, true, 2.5), (Gating::Sigmoid, false, None, 1, false, 1.0)]
        {
            let spec = super::super::Experts { count, used: 3, ffn, normalize, scale, gating, groups, shared, leading_dense: 0 };
            let router: Vec<u8> = (0..count * hidden).flat_map(|_| (unit(&mut next) * 0.5).to_le_bytes()).collect();
            let moe = Moe {
                router: QLinear::new(QMatrix::new(0, router, count, hidden).expect("an f32 matrix"), None),
                bias: bias.then(|| (0..count).map(|_| unit(&mut next) * 0.1).collect()),
                experts: (0..count).map(|_| mlp(ffn, hidden, &mut next)).collect(),
                shared: (shared > 0).then(|| mlp(ffn, hidden, &mut next)),
            };
            let x: Vec<f32> = (0..seq * hidden).map(|_| unit(&mut next)).collect();
            let cpu = Cpu::default();
            let batched = cpu.experts(&Tensor { rows: seq, data: x.clone() }, &moe, &spec, Activation::Silu).expect("a forward pass").data;
            for (t, row) in x.chunks_exact(hidden).enumerate() {
                let alone = cpu.experts(&Tensor { rows: 1, data: row.to_vec() }, &moe, &spec, Activation::Silu).expect("a forward pass").data;
                let got = &batched[t * hidden..(t + 1) * hidden];
                assert!(got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()), "{gating:?} token {t}: {:?} vs {:?}", &got[..4], &alone[..4]);
                assert!(alone.iter().any(|&v| v != 0.0));
            }
        }
    }
}
