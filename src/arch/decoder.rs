//! The decoder every supported architecture runs: embedding → blocks of (attention or a short
//! convolution, gated feed-forward or mixture of experts), each with RMS norms and residuals →
//! final norm → output projection.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};

use super::attention::{Rope, Spec};
use super::{conv, math, Activation, Config, Family, Gating};
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
    /// RoPE's per-pair angle divisors, `[rope_dims / 2]` each: `rope_freqs` for every context
    /// (Llama 3.1), else LongRoPE's long factors beyond the original context and short ones
    /// within it (Phi-3), as llama.cpp chooses by the context size.
    rope_freqs: Option<Vec<f32>>,
    rope_long: Option<Vec<f32>>,
    rope_short: Option<Vec<f32>>,
    /// `[head_dim]` ones: the weight of the weightless Q/K norms (Llama 4).
    unit_norm: Option<B::Tensor>,
    forward_passes: AtomicU64,
}

struct Layer<B: Backend> {
    /// `[hidden]` each; absent where the family normalises outputs only (OLMo 2).
    attn_norm: Option<B::Tensor>,
    attention: Attention<B>,
    /// Norms applied to the attention and feed-forward outputs before the residual (Gemma,
    /// OLMo 2, GLM-4).
    post_attn_norm: Option<B::Tensor>,
    ffn_norm: Option<B::Tensor>,
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
        /// Attention sinks, one logit per query head, `[heads]` (gpt-oss).
        sinks: Option<Vec<f32>>,
        /// RMS norms of queries and keys: per head, `[head_dim]` (Qwen 3, Gemma 3), or over the
        /// whole projection, `[heads·head_dim]` and `[kv_heads·head_dim]` (OLMo 2).
        q_norm: Option<B::Tensor>,
        k_norm: Option<B::Tensor>,
    },
    /// LFM2's gated short convolution, in attention's place: `out(c · conv(b · x))` of the
    /// parts `b`, `c`, `x` of `in_proj`, run by [`Backend::short_conv`].
    ShortConv {
        /// `(3·hidden, hidden)`: `b`, `c` and `x`, in turn.
        in_proj: B::Matrix,
        /// `[hidden][kernel]`: each channel's taps, oldest first.
        weights: B::Tensor,
        /// `(hidden, hidden)`
        out_proj: B::Matrix,
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
/// (chosen with `bias` added, when there is one) and through the shared experts, whose output
/// `shared_gate` (`(1, hidden)`, Qwen2-MoE) weighs by [`shared_gate_weight`] of its product
/// with the token. Run by [`Backend::experts`].
pub struct Moe<B: Backend> {
    pub(crate) router: B::Matrix,
    pub(crate) bias: Option<Vec<f32>>,
    pub(crate) experts: Vec<Mlp<B>>,
    pub(crate) shared: Option<Mlp<B>>,
    pub(crate) shared_gate: Option<B::Matrix>,
}

/// The per-generation state: the memory of every layer (its KV cache, or a convolution's
/// recurrent state). Cloning copies it (a fork of a conversation); the default state holds no
/// position, and a forward pass on it fails.
pub struct State<B: Backend = Cpu> {
    caches: Vec<Memory<B>>,
    len: usize,
    capacity: usize,
}

/// One layer's memory of the positions filled so far.
enum Memory<B: Backend> {
    /// An attention layer's keys and values.
    Kv(B::Cache),
    /// A short-convolution layer's last inputs.
    Conv(B::Conv),
}

impl<B: Backend> Clone for Memory<B> {
    fn clone(&self) -> Memory<B> {
        match self {
            Memory::Kv(c) => Memory::Kv(c.clone()),
            Memory::Conv(c) => Memory::Conv(c.clone()),
        }
    }
}

impl<B: Backend> Memory<B> {
    fn store(&self) -> &dyn KvStore {
        match self {
            Memory::Kv(c) => c,
            Memory::Conv(c) => c,
        }
    }

    fn store_mut(&mut self) -> &mut dyn KvStore {
        match self {
            Memory::Kv(c) => c,
            Memory::Conv(c) => c,
        }
    }
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

    /// Bytes one position takes in a save, over all layers: its keys and values, or a
    /// convolution layer's input.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.caches.iter().map(|c| c.store().bytes_per_position()).sum()
    }

    /// Forgets every position from `len` on, keeping the prefix. Also brings every layer back
    /// to the state's length after a forward pass that failed half way.
    ///
    /// A sliding-window layer keeps a ring of its last positions, and a convolution layer
    /// (LFM2) a ring of its last inputs, so neither can go back to a `len` whose window or
    /// kernel it has overwritten: the state then forgets everything, and the next pass
    /// recomputes the prefix ([`State::len`] says what was kept; sessions and generations run
    /// the tokens from there).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let mut kept = true;
        for cache in &mut self.caches {
            kept &= cache.store_mut().truncate(self.len);
        }
        if !kept {
            self.caches.iter_mut().for_each(|c| c.store_mut().clear());
            self.len = 0;
        }
    }

    /// Positions of memory each layer has: the capacity, a sliding-window layer's ring (its
    /// window and [`super::attention::RING_PART`] positions), or a convolution layer's (its
    /// kernel's and as many).
    pub fn layer_rows(&self) -> Vec<usize> {
        self.caches.iter().map(|c| c.store().rows()).collect()
    }

    /// Makes room for `capacity` positions, keeping those filled (a session's cache grows as
    /// its conversation does). A smaller `capacity` changes nothing.
    ///
    /// # Errors
    /// [`Error::KvCacheTooLarge`] when the memory is not there; the layers grown before keep
    /// their larger room, and the state still holds what it held.
    pub fn grow(&mut self, capacity: usize) -> Result<()> {
        for cache in &mut self.caches {
            cache.store_mut().grow(capacity)?;
        }
        self.capacity = self.capacity.max(capacity);
        Ok(())
    }

    /// The filled positions of every layer as bytes (little-endian; keys and values as f16, a
    /// convolution's inputs as f32), for [`State::restore`].
    pub fn save(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.saved_bytes(self.len));
        for cache in &self.caches {
            cache.store().save(&mut out);
        }
        out
    }

    /// The bytes [`State::save`] writes for `len` positions: every position of a global
    /// layer, the last `window - 1` of a sliding-window layer, the last `kernel - 1` of a
    /// convolution layer.
    fn saved_bytes(&self, len: usize) -> usize {
        self.caches.iter().map(|c| c.store().saved_positions(len).saturating_mul(c.store().bytes_per_position())).fold(0, usize::saturating_add)
    }

    /// Fills the first `len` positions from what [`State::save`] wrote for the same model,
    /// growing the cache when it is smaller.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `bytes` is not the size `len` positions of this
    /// model's cache take.
    pub fn restore(&mut self, len: usize, bytes: &[u8]) -> Result<()> {
        let invalid = || Error::InvalidParameter { name: "bytes", reason: format!("they do not hold {len} positions of this model's KV cache") };
        if self.saved_bytes(len) != bytes.len() {
            return Err(invalid());
        }
        self.grow(len)?;
        let mut at = 0;
        for cache in &mut self.caches {
            at += cache.store_mut().restore(len, &bytes[at..]).ok_or_else(invalid)?;
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
    /// them, except those repacked for this CPU's kernels, within a budget (at least
    /// [`REPACK_BUDGET`] bytes of them), whose file bytes are then released (see
    /// [`Bytes::release`]). `progress(bytes, total)` reports the bytes placed so far.
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
        // LFM2's converter names its final norm `token_embd_norm` (llama.cpp reads it so).
        let output_norm = loader.vector(if c.family == Family::Lfm2 { "token_embd_norm.weight" } else { "output_norm.weight" }, c.hidden)?;
        let pairs = c.rope_dims / 2;
        let rope_freqs = loader.opt_values("rope_freqs.weight", pairs)?;
        let rope_long = loader.opt_values("rope_factors_long.weight", pairs)?;
        let rope_short = loader.opt_values("rope_factors_short.weight", pairs)?;

        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = |name: &str| format!("blk.{i}.{name}");
            let ffn = match c.experts {
                Some(e) if e.in_layer(i) => FeedForward::Experts(Moe {
                    router: loader.linear(&p("ffn_gate_inp"), Some(e.count), c.hidden)?,
                    bias: loader.opt_values(&p("exp_probs_b.bias"), e.count)?,
                    experts: loader.experts(i, e.count, e.ffn, c.hidden)?,
                    shared: match e.shared_ffn {
                        0 => None,
                        n => Some(Mlp {
                            gate: loader.linear(&p("ffn_gate_shexp"), Some(n), c.hidden)?,
                            up: loader.linear(&p("ffn_up_shexp"), Some(n), c.hidden)?,
                            down: loader.linear(&p("ffn_down_shexp"), Some(c.hidden), n)?,
                        }),
                    },
                    shared_gate: match c.family {
                        Family::Qwen2Moe => Some(loader.row(&p("ffn_gate_inp_shexp.weight"), c.hidden)?),
                        _ => None,
                    },
                }),
                // Phi-3 and GLM-4 store the gate and up projections as one, gate rows first.
                _ if matches!(c.family, Family::Phi3 | Family::Glm4) => {
                    let [gate, up] = loader.linear_halves(&p("ffn_up"), c.hidden)?;
                    FeedForward::Dense(Mlp { gate, up, down: loader.linear(&p("ffn_down"), Some(c.hidden), 0)? })
                }
                _ => FeedForward::Dense(Mlp {
                    gate: loader.linear(&p("ffn_gate"), None, c.hidden)?,
                    up: loader.linear(&p("ffn_up"), None, c.hidden)?,
                    down: loader.linear(&p("ffn_down"), Some(c.hidden), 0)?,
                }),
            };
            let attention = match (&c.short_conv, c.latent) {
                (Some(conv), _) if c.is_conv(i) => Attention::ShortConv {
                    in_proj: loader.linear(&p("shortconv.in_proj"), Some(3 * c.hidden), c.hidden)?,
                    weights: {
                        let taps = loader.table(&p("shortconv.conv.weight"), c.hidden, conv.kernel)?;
                        backend.vector(taps)?
                    },
                    out_proj: loader.linear(&p("shortconv.out_proj"), Some(c.hidden), c.hidden)?,
                },
                (_, None) => {
                    let (q_norm, k_norm) = if c.qk_norm_whole { (c.heads * c.head_dim, c.kv_heads * c.head_dim) } else { (c.head_dim, c.head_dim) };
                    let widths = [c.heads * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.value_dim];
                    // One fused projection (Phi-3, GLM-4), its rows the queries', keys' and
                    // values' in turn, is three; each output is the same dot product either way.
                    let [q, k, v] = if loader.index.contains_key(p("attn_qkv.weight").as_str()) {
                        loader.linear_parts(&p("attn_qkv"), widths, c.hidden)?
                    } else {
                        [loader.linear(&p("attn_q"), Some(widths[0]), c.hidden)?, loader.linear(&p("attn_k"), Some(widths[1]), c.hidden)?, loader.linear(&p("attn_v"), Some(widths[2]), c.hidden)?]
                    };
                    Attention::Standard {
                        sinks: loader.opt_values(&p("attn_sinks.weight"), c.heads)?,
                        q_norm: loader.opt_vector(&p("attn_q_norm.weight"), q_norm)?,
                        k_norm: loader.opt_vector(&p("attn_k_norm.weight"), k_norm)?,
                        q,
                        k,
                        v,
                        o: loader.linear(&p("attn_output"), Some(c.hidden), c.heads * c.value_dim)?,
                    }
                }
                (_, Some(l)) => {
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
            // gpt-oss and GLM-4.5 name their feed-forward norm `post_attention_norm`.
            let (post_attn_norm, ffn_norm) = match c.family {
                Family::GptOss | Family::Glm4Moe => (None, "post_attention_norm.weight"),
                _ => (loader.opt_vector(&p("post_attention_norm.weight"), c.hidden)?, "ffn_norm.weight"),
            };
            let post_ffn_norm = loader.opt_vector(&p("post_ffw_norm.weight"), c.hidden)?;
            let mut pre_norm = |name: &str| if c.pre_norms { loader.vector(&p(name), c.hidden).map(Some) } else { Ok(None) };
            layers.push(Layer { attn_norm: pre_norm("attn_norm.weight")?, attention, post_attn_norm, ffn_norm: pre_norm(ffn_norm)?, ffn, post_ffn_norm });
        }
        // The output layer last: it is multiplied by one row per token, where repacking gains
        // less than for the blocks' matrices (a prompt's rows go through those), so it gets what
        // they leave of the repacking budget.
        let output = match tied {
            false => loader.linear_placed("output", Some(vocab_size), c.hidden, Products::OneRow)?,
            true => table.clone(), // the embedding table itself
        };
        drop(loader);
        let unit_norm = if c.qk_unit_norm { Some(backend.vector(vec![1.0; c.head_dim])?) } else { None };
        Ok(Weights { backend, config, vocab_size, embedding: table, layers, output_norm, output, rope_freqs, rope_long, rope_short, unit_norm, forward_passes: AtomicU64::new(0) })
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
        // Sliding-window layers keep a ring of their window (see `CacheSpec::rows`); a
        // convolution layer keeps its last inputs instead (`None` here).
        let specs: Vec<Option<CacheSpec>> = (0..c.layers)
            .map(|i| {
                (!c.is_conv(i)).then(|| CacheSpec {
                    kv_heads: c.kv_heads,
                    capacity,
                    head_dim: c.head_dim,
                    value_dim: c.value_dim,
                    values_in_keys,
                    // A chunked layer's queries see at most a chunk back, so its ring is a
                    // sliding window's of the chunk's size.
                    window: c.sliding_window.filter(|_| c.is_local(i)).map(|(w, _)| w),
                })
            })
            .collect();
        // f16 keys (and values) for every attention layer, f32 inputs for every convolution
        // layer, refused up front when the memory is not there.
        let width = c.head_dim + if values_in_keys { 0 } else { c.value_dim };
        let kernel = c.short_conv.as_ref().map_or(0, |s| s.kernel);
        let layer_bytes = |spec: &Option<CacheSpec>| match spec {
            Some(s) => [c.kv_heads, s.rows(), width, 2],
            None => [1, conv::ring_rows(kernel, capacity), c.hidden, 4],
        };
        let bytes = specs.iter().map(|s| layer_bytes(s).iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))).fold(0u64, u64::saturating_add);
        let too_large = || Error::KvCacheTooLarge { positions: capacity, bytes };
        if bytes > isize::MAX as u64 || crate::platform::available_memory().is_some_and(|free| bytes > free) {
            return Err(too_large());
        }
        let b = &self.backend;
        let caches = specs
            .iter()
            .map(|spec| match spec {
                Some(spec) => b.cache(spec).map(Memory::Kv),
                None => b.conv_state(c.hidden, kernel, capacity).map(Memory::Conv),
            })
            .map(|memory| memory.map_err(|_| too_large()))
            .collect::<Result<_>>()?;
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
        let logits = self.forward_on_device(state, tokens, from)?;
        self.backend.read(&logits)
    }

    /// As [`Weights::forward_rows`], but leaves the logits where the backend holds them: a
    /// browser's GPU reads them back asynchronously ([`crate::gpu::Gpu::read`]).
    ///
    /// # Errors
    /// As [`Weights::forward_rows`].
    pub fn forward_on_device(&self, state: &mut State<B>, tokens: &[u32], from: usize) -> Result<B::Tensor> {
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

        let rope_factors = match (&self.rope_freqs, &self.rope_long) {
            (Some(f), _) => Some(f),
            (None, Some(long)) if state.capacity > c.rope_original_context => Some(long),
            _ => self.rope_short.as_ref(),
        };

        // x: [seq][hidden]
        let mut x = b.embed(&self.embedding, tokens)?;
        if let Some(scale) = c.embedding_scale {
            b.scale(&mut x, scale as f32)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            // The block's input, normalised unless the family normalises outputs only.
            let normed;
            let h = match &layer.attn_norm {
                Some(w) => {
                    normed = b.normed(&x, w, eps)?;
                    &normed
                }
                None => &x,
            };
            let mut a = match (&layer.attention, &mut state.caches[i]) {
                (Attention::ShortConv { in_proj, weights, out_proj }, Memory::Conv(conv)) => b.matmul(&b.short_conv(&b.matmul(h, in_proj)?, weights, conv)?, out_proj)?,
                (_, Memory::Kv(cache)) => self.attention(layer, i, h, cache, pos, rope_factors.map(Vec::as_slice))?,
                _ => return Err(Error::Compute(format!("layer {i}'s memory is not of its kind"))),
            };
            if let Some(n) = &layer.post_attn_norm {
                b.rms_norm(&mut a, n, eps)?;
            }
            if let Some(by) = c.residual_scale {
                b.scale(&mut a, by)?;
            }
            b.add(&mut x, &a)?;
            let normed;
            let h = match &layer.ffn_norm {
                Some(w) => {
                    normed = b.normed(&x, w, eps)?;
                    &normed
                }
                None => &x,
            };
            let mut f = match &layer.ffn {
                FeedForward::Dense(mlp) => mlp.forward(b, h, c.activation)?,
                FeedForward::Experts(moe) => {
                    let Some(spec) = &c.experts else { return Err(Error::Compute("experts without an expert count".into())) };
                    b.experts(h, moe, spec, c.activation)?
                }
            };
            if let Some(n) = &layer.post_ffn_norm {
                b.rms_norm(&mut f, n, eps)?;
            }
            if let Some(by) = c.residual_scale {
                b.scale(&mut f, by)?;
            }
            b.add(&mut x, &f)?;
        }
        state.len += tokens.len();

        // Only the asked-for positions' logits (the last one, to pick the next token).
        let mut rows = b.tail(x, from)?;
        b.rms_norm(&mut rows, &self.output_norm, eps)?;
        let mut logits = b.matmul(&rows, &self.output)?;
        if let Some(by) = c.logit_scale {
            b.scale(&mut logits, 1.0 / by)?;
        }
        if let Some(cap) = c.final_softcap {
            b.soft_cap(&mut logits, cap)?;
        }
        Ok(logits)
    }

    /// The backend the weights are placed on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Self-attention of layer `index` for `h` (`[seq][hidden]`) at positions `pos..pos+seq`,
    /// RoPE's angles divided by `rope_factors` when given.
    fn attention(&self, layer: &Layer<B>, index: usize, h: &B::Tensor, cache: &mut B::Cache, pos: usize, rope_factors: Option<&[f32]>) -> Result<B::Tensor> {
        let (b, c) = (&self.backend, &self.config);
        let eps = c.eps as f32;
        let local = c.is_local(index);
        let rope = Rope {
            dims: c.rope_dims,
            base: if local { c.rope_base_local } else { c.rope_base } as f32,
            style: c.rope_style,
            yarn: c.yarn.map(|y| (1.0 / y.factor, Rope::yarn_correction(c.rope_dims, c.rope_base as f32, y.original_context))),
            factors: rope_factors,
            mscale: c.rope_mscale,
        };
        let sinks = match &layer.attention {
            Attention::Standard { sinks, .. } => sinks.as_deref(),
            _ => None,
        };
        let spec = |scale: f32| Spec {
            heads: c.heads,
            scale,
            softcap: c.attention_softcap,
            window: if local && !c.chunked { c.sliding_window.map(|(w, _)| w) } else { None },
            chunk: if local && c.chunked { c.sliding_window.map(|(w, _)| w) } else { None },
            sinks,
            kernel: c.attention_kernel,
        };
        let scale = c.attention_scale as f32;
        let (q, k, v, k_norm, q_norm, o) = match &layer.attention {
            Attention::Latent { query, kv_a, kv_a_norm, kv_up, o } => {
                return self.latent_attention(query, kv_a, kv_a_norm, kv_up, o, h, cache, pos, &rope, &spec(scale));
            }
            Attention::Standard { q, k, v, o, q_norm, k_norm, .. } => (q, k, v, k_norm, q_norm, o),
            Attention::ShortConv { .. } => return Err(Error::Compute(format!("layer {index} convolves; it has no attention"))),
        };
        // [seq][heads][head_dim], [seq][kv_heads][head_dim], [seq][kv_heads][value_dim]
        let [mut q, mut k, v]: [B::Tensor; 3] = b.matmuls(h, &[q, k, v])?.try_into().map_err(|_| Error::Compute("three products gave another count".into()))?;
        if let Some(n) = q_norm {
            b.rms_norm(&mut q, n, eps)?;
        }
        if let Some(n) = k_norm {
            b.rms_norm(&mut k, n, eps)?;
        }
        if c.has_rope(index) {
            b.rope(&mut q, c.heads, c.head_dim, pos, &rope)?;
            b.rope(&mut k, c.kv_heads, c.head_dim, pos, &rope)?;
            if let Some(ones) = &self.unit_norm {
                b.rms_norm(&mut q, ones, eps)?;
                b.rms_norm(&mut k, ones, eps)?;
            }
        }
        if let Some(t) = c.attention_temperature.filter(|t| !t.nope_only || !c.has_rope(index)) {
            b.scale_rows(&mut q, c.heads * c.head_dim, &|s| t.at(pos + s))?;
        }
        // Gemma and Phi-3 scale the queries before the product (llama.cpp does so too); the
        // others scale each product. The two differ in rounding, not in value.
        let product_scale = if c.scale_queries {
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
        Gating::Sigmoid => logits.iter().map(|&v| sigmoid(v)).collect(),
        Gating::SoftmaxOfChosen | Gating::SigmoidOfChosen => logits.to_vec(),
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
    match spec.gating {
        Gating::SoftmaxOfChosen => weights = softmax(&weights),
        Gating::SigmoidOfChosen => weights.iter_mut().for_each(|w| *w = sigmoid(*w)),
        _ => {}
    }
    if spec.normalize {
        let sum = weights.iter().sum::<f32>().max(6.103_515_6e-5);
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    if spec.scale != 0.0 && spec.scale != 1.0 {
        weights.iter_mut().for_each(|w| *w *= spec.scale);
    }
    chosen.into_iter().zip(weights).collect()
}

/// The weight of a token's shared experts from its product with the shared expert's gate: the
/// logistic sigmoid, as llama.cpp's Qwen2-MoE graph forms it (`silu(x) / x`).
pub(crate) fn shared_gate_weight(x: f32) -> f32 {
    (x / (1.0 + math::exp(-x))) / x
}

/// The indices of the `k` largest values, largest first (lower index first among equals).
fn top(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// The logistic sigmoid as ggml computes it.
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + math::exp(-x))
}

/// Softmax of `x`, summed in f64 as llama.cpp sums it.
fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut exps: Vec<f32> = x.iter().map(|v| v - max).collect();
    math::exp_in_place(&mut exps);
    let sum: f64 = exps.iter().map(|&e| e as f64).sum();
    let inv = (1.0 / sum) as f32;
    exps.into_iter().map(|e| e * inv).collect()
}

impl<B: Backend> Mlp<B> {
    /// `down(act(gate(x)) · up(x))` for the rows of `x`.
    pub(crate) fn forward(&self, b: &B, x: &B::Tensor, activation: Activation) -> Result<B::Tensor> {
        let [gate, up]: [B::Tensor; 2] = b.matmuls(x, &[&self.gate, &self.up])?.try_into().map_err(|_| Error::Compute("two products gave another count".into()))?;
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

    /// `<name>.weight` (and its bias) of `inputs`-wide rows as consecutive linear layers of
    /// `widths` rows each: a fused projection as the projections it joins.
    fn linear_parts<const N: usize>(&mut self, name: &str, widths: [usize; N], inputs: usize) -> Result<[B::Matrix; N]> {
        let weight_name = format!("{name}.weight");
        let (bytes, ggml_type, shape) = self.raw(&weight_name)?;
        let rows: usize = widths.iter().sum();
        if shape != [rows, inputs] {
            return Err(Error::InvalidTensor { name: weight_name, reason: format!("shape {shape:?}, expected [{rows}, {inputs}]") });
        }
        let bias = self.opt_values(&format!("{name}.bias"), rows)?;
        let row_bytes = bytes.len() / rows;
        let uneven = || Error::InvalidTensor { name: weight_name.clone(), reason: "data does not split into its projections".into() };
        let mut first = 0;
        let mut parts = Vec::with_capacity(N);
        for width in widths {
            let part = bytes.slice(first * row_bytes..(first + width) * row_bytes).ok_or_else(uneven)?;
            let part_bias = bias.as_ref().map(|b| b[first..first + width].to_vec());
            parts.push(self.place(&weight_name, ggml_type, part, width, inputs, part_bias, Products::Batched)?);
            first += width;
        }
        parts.try_into().map_err(|_| uneven())
    }

    /// `<name>.weight` of `inputs`-wide rows split into its first and second halves (Phi-3's
    /// and GLM-4's gate and up projections in one).
    fn linear_halves(&mut self, name: &str, inputs: usize) -> Result<[B::Matrix; 2]> {
        let weight_name = format!("{name}.weight");
        let rows = self.info(&weight_name)?.dims.get(1).copied().unwrap_or(0);
        let half = usize::try_from(rows / 2).ok().filter(|&h| h > 0 && rows % 2 == 0);
        let Some(half) = half else {
            return Err(Error::InvalidTensor { name: weight_name, reason: format!("{rows} rows do not halve into gate and up projections") });
        };
        self.linear_parts(name, [half, half], inputs)
    }

    /// A 1-D tensor of `len` values as a matrix with one row, `(1, len)`.
    fn row(&mut self, name: &str, len: usize) -> Result<B::Matrix> {
        let (bytes, ggml_type, shape) = self.raw(name)?;
        if shape != [len] {
            return Err(Error::InvalidTensor { name: name.into(), reason: format!("shape {shape:?}, expected [{len}]") });
        }
        self.place(name, ggml_type, bytes, 1, len, None, Products::Batched)
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
        let mut part = |name: &str, rows: usize, cols: usize| -> Result<Vec<B::Matrix>> {
            let name = format!("blk.{layer}.{name}");
            let biases = self.opt_rows(&format!("{name}.bias"), count, rows)?;
            self.split_placed(&format!("{name}.weight"), count, rows, cols, biases, Products::InPlace)
        };
        let gates = part("ffn_gate_exps", ffn, hidden)?;
        let ups = part("ffn_up_exps", ffn, hidden)?;
        let downs = part("ffn_down_exps", hidden, ffn)?;
        Ok(gates.into_iter().zip(ups).zip(downs).map(|((gate, up), down)| Mlp { gate, up, down }).collect())
    }

    /// A 3-D tensor `(count, rows, cols)` as `count` matrices.
    fn split(&mut self, name: &str, count: usize, rows: usize, cols: usize) -> Result<Vec<B::Matrix>> {
        self.split_placed(name, count, rows, cols, None, Products::Batched)
    }

    /// A 2-D tensor `(count, width)` of values as its `count` rows, when the file has it (the
    /// experts' biases of gpt-oss).
    fn opt_rows(&mut self, name: &str, count: usize, width: usize) -> Result<Option<Vec<Vec<f32>>>> {
        if !self.index.contains_key(name) {
            return Ok(None);
        }
        Ok(Some(self.table(name, count, width)?.chunks_exact(width.max(1)).map(<[f32]>::to_vec).collect()))
    }

    /// The values of a 2-D tensor `(count, width)`, row after row, dequantized if stored
    /// quantized (LFM2's convolution taps).
    fn table(&mut self, name: &str, count: usize, width: usize) -> Result<Vec<f32>> {
        let (bytes, ggml_type, shape) = self.raw(name)?;
        if shape != [count, width] {
            return Err(Error::InvalidTensor { name: name.into(), reason: format!("shape {shape:?}, expected [{count}, {width}]") });
        }
        let m = QMatrix::load(ggml_type, bytes, count, width, false).map_err(|e| Error::InvalidTensor { name: name.into(), reason: e.to_string() })?;
        m.to_f32()
    }

    /// A 3-D tensor `(count, rows, cols)` as `count` matrices (with their `biases`, `count`
    /// rows of `rows` values), placed for their `products`.
    fn split_placed(&mut self, name: &str, count: usize, rows: usize, cols: usize, biases: Option<Vec<Vec<f32>>>, products: Products) -> Result<Vec<B::Matrix>> {
        let (bytes, ggml_type, shape) = self.raw(name)?;
        if shape != [count, rows, cols] {
            return Err(Error::InvalidTensor { name: name.into(), reason: format!("shape {shape:?}, expected [{count}, {rows}, {cols}]") });
        }
        let per = bytes.len() / count;
        let mut biases = biases.map(Vec::into_iter);
        (0..count)
            .map(|i| {
                let part = bytes.slice(i * per..(i + 1) * per).ok_or_else(|| Error::InvalidTensor { name: name.into(), reason: "data does not split into equal parts".into() })?;
                let bias = biases.as_mut().and_then(Iterator::next);
                self.place(name, ggml_type, part, rows, cols, bias, products)
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

    /// `count` random experts of `ffn` rows over `hidden` values, an f32 router, a selection
    /// bias and a shared expert if asked.
    fn moe(count: usize, hidden: usize, ffn: usize, bias: bool, shared: bool, next: &mut impl FnMut() -> u64) -> Moe<Cpu> {
        let mut unit = || (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        let router: Vec<u8> = (0..count * hidden).flat_map(|_| (unit() * 0.5).to_le_bytes()).collect();
        let bias = bias.then(|| (0..count).map(|_| unit() * 0.1).collect());
        Moe {
            router: QLinear::new(QMatrix::new(0, router, count, hidden).expect("an f32 matrix"), None),
            bias,
            experts: (0..count).map(|_| mlp(ffn, hidden, next)).collect(),
            shared: shared.then(|| mlp(ffn, hidden, next)),
            shared_gate: None,
        }
    }

    /// Asserts that the experts give each token of `x` (rows of `hidden`) alone exactly (to the
    /// bit) what they give it in the batch, and something other than zeros.
    fn each_token_alone_as_batched(cpu: &Cpu, moe: &Moe<Cpu>, spec: &super::super::Experts, x: &[f32], hidden: usize, label: &str) {
        let seq = x.len() / hidden;
        let batched = cpu.experts(&Tensor { rows: seq, data: x.to_vec() }, moe, spec, Activation::Silu).expect("a forward pass").data;
        for (t, row) in x.chunks_exact(hidden).enumerate() {
            let alone = cpu.experts(&Tensor { rows: 1, data: row.to_vec() }, moe, spec, Activation::Silu).expect("a forward pass").data;
            let got = &batched[t * hidden..(t + 1) * hidden];
            assert!(got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()), "{label} token {t}: {:?} vs {:?}", &got[..4], &alone[..4]);
            assert!(alone.iter().any(|&v| v != 0.0));
        }
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
            let spec = super::super::Experts { count, used: 3, ffn, normalize, scale, gating, groups, shared_ffn: shared * ffn, leading_dense: 0, interleave: 1, weigh_inputs: false };
            let moe = moe(count, hidden, ffn, bias, shared > 0, &mut next);
            let x: Vec<f32> = (0..seq * hidden).map(|_| unit(&mut next)).collect();
            let cpu = Cpu::default();
            each_token_alone_as_batched(&cpu, &moe, &spec, &x, hidden, &format!("{gating:?}"));
        }
    }

    /// A token's few experts run in parts of rows side by side (the CPU backend's
    /// `experts_in_parts`), a prompt's many each whole on one thread: the same bits. Forty
    /// experts, four per token: eleven tokens choose more than sixteen (whole), one token four
    /// (in parts: three parts of the 96 rows of gate and up, four of the 64 of down).
    #[test]
    fn experts_in_parts_equal_whole_experts() {
        let mut next = xorshift(0x9A27_5E11_0B0E_77A1);
        let (hidden, count, ffn, seq) = (64, 40, 96, 11);
        let unit = |next: &mut dyn FnMut() -> u64| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        let spec = super::super::Experts { count, used: 4, ffn, normalize: true, scale: 1.0, gating: Gating::Softmax, groups: None, shared_ffn: 0, leading_dense: 0, interleave: 1, weigh_inputs: false };
        let moe = moe(count, hidden, ffn, false, false, &mut next);
        let x: Vec<f32> = (0..seq * hidden).map(|_| unit(&mut next)).collect();
        let cpu = Cpu::default();
        let logits = cpu.matmul(&Tensor { rows: seq, data: x.clone() }, &moe.router).expect("router logits").data;
        let chosen: std::collections::BTreeSet<usize> = logits.chunks_exact(count).flat_map(|l| route(&spec, None, l).into_iter().map(|(e, _)| e)).collect();
        assert!(chosen.len() >= 16, "the batch should run its experts whole: {} chosen", chosen.len());
        each_token_alone_as_batched(&cpu, &moe, &spec, &x, hidden, "");
    }
}
