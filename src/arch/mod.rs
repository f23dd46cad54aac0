//! Architectures: one decoder built from parts, configured from the file's `<arch>.*` metadata.
//!
//! `general.architecture` picks a [`Family`]; the family fixes what the metadata cannot say
//! (RoPE layout, activation, embedding scaling, Gemma 3's sliding-window layer pattern), and the
//! tensors present say the rest (QKV bias, per-head Q/K norms, post-norms, experts).

mod attention;
mod decoder;

pub use decoder::{State, Weights};

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// The `general.architecture` values candlewick runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "qwen3moe", "gemma3"];

/// A family of architectures sharing one layer layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama`: Llama, SmolLM2, Mistral-style models (also Mixtral-style experts).
    Llama,
    /// `qwen2`: QKV bias.
    Qwen2,
    /// `qwen3`: per-head Q/K RMS norms.
    Qwen3,
    /// `qwen3moe`: Qwen3 attention with a mixture of experts.
    Qwen3Moe,
    /// `gemma3`: scaled embeddings, GELU, post-norms, sliding-window layers.
    Gemma3,
}

/// How RoPE pairs the dimensions it rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(0,1), (2,3), …` (llama.cpp's "normal" RoPE; Llama files are stored so).
    Interleaved,
    /// First half with second half (llama.cpp's "NeoX" RoPE).
    Halves,
}

/// The feed-forward activation of a gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up`.
    Silu,
    /// `gelu_tanh(gate) * up`.
    GeluTanh,
}

/// Mixture-of-experts sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Experts {
    /// Experts per layer.
    pub count: usize,
    /// Experts each token is routed to.
    pub used: usize,
    /// Whether the chosen experts' weights are renormalised to sum to one.
    pub normalize: bool,
}

/// The hyper-parameters of a decoder, read from the file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The family.
    pub family: Family,
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one query/key head.
    pub head_dim: usize,
    /// Width of one value head.
    pub value_dim: usize,
    /// Dimensions of each head that RoPE rotates.
    pub rope_dims: usize,
    /// RoPE base frequency of global-attention layers.
    pub rope_base: f64,
    /// RoPE base frequency of sliding-window layers.
    pub rope_base_local: f64,
    /// How RoPE pairs dimensions.
    pub rope_style: RopeStyle,
    /// RMS-norm epsilon.
    pub eps: f64,
    /// The context length the model was trained for.
    pub context_length: usize,
    /// Sliding-window size and the layer pattern: layer `i` is global when
    /// `(i + 1) % pattern == 0`, local otherwise.
    pub sliding_window: Option<(usize, usize)>,
    /// Experts, for mixture-of-experts layers.
    pub experts: Option<Experts>,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Factor the token embeddings are multiplied by.
    pub embedding_scale: Option<f64>,
    /// Factor the attention scores are multiplied by.
    pub attention_scale: f64,
}

impl Config {
    /// Reads the configuration of the file's architecture.
    ///
    /// # Errors
    /// [`Error::UnsupportedArchitecture`] listing the supported ones, and
    /// [`Error::MissingMetadata`] / [`Error::MetadataType`] / [`Error::InvalidMetadata`] for a
    /// needed key that is absent, mistyped or impossible.
    pub fn from_gguf(gguf: &Gguf) -> Result<Config> {
        let arch = gguf.architecture()?;
        let family = match arch {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "qwen3moe" => Family::Qwen3Moe,
            "gemma3" => Family::Gemma3,
            other => {
                return Err(Error::UnsupportedArchitecture { name: other.to_string(), supported: SUPPORTED_ARCHITECTURES.join(", ") })
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let positive = |k: &str| -> Result<usize> {
            let v = gguf.u64(&key(k))?;
            if v == 0 || v > 1 << 24 {
                return Err(Error::InvalidMetadata { key: key(k), reason: format!("{v} is out of range") });
            }
            Ok(v as usize)
        };
        let hidden = positive("embedding_length")?;
        let heads = positive("attention.head_count")?;
        let kv_heads = match gguf.get(&key("attention.head_count_kv")) {
            Some(_) => positive("attention.head_count_kv")?,
            None => heads,
        };
        if heads % kv_heads != 0 {
            return Err(Error::InvalidMetadata {
                key: key("attention.head_count_kv"),
                reason: format!("{heads} query heads cannot be grouped over {kv_heads} key/value heads"),
            });
        }
        let head_dim = match gguf.get(&key("attention.key_length")) {
            Some(_) => positive("attention.key_length")?,
            None if hidden % heads == 0 => hidden / heads,
            None => return Err(Error::MissingMetadata { key: key("attention.key_length") }),
        };
        let value_dim = match gguf.get(&key("attention.value_length")) {
            Some(_) => positive("attention.value_length")?,
            None => head_dim,
        };
        let rope_dims = match gguf.get(&key("rope.dimension_count")) {
            Some(_) => positive("rope.dimension_count")?,
            None => head_dim,
        };
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(Error::InvalidMetadata {
                key: key("rope.dimension_count"),
                reason: format!("{rope_dims} must be even and at most the head width {head_dim}"),
            });
        }
        let rope_base = gguf.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let eps = gguf.f64(&key("attention.layer_norm_rms_epsilon"))?;
        let experts = match gguf.opt_u64(&key("expert_count"))? {
            None | Some(0) => None,
            Some(count) => {
                let used = positive("expert_used_count")?;
                if used as u64 > count {
                    return Err(Error::InvalidMetadata { key: key("expert_used_count"), reason: format!("{used} of {count} experts") });
                }
                // Qwen3-MoE and Mixtral renormalise the chosen experts' softmax weights.
                Some(Experts { count: count as usize, used, normalize: true })
            }
        };
        let sliding_window = match (family, gguf.opt_u64(&key("attention.sliding_window"))?) {
            // Gemma 3 alternates five local layers with one global layer (llama.cpp's pattern).
            (Family::Gemma3, Some(w)) if w > 0 => Some((w as usize, 6)),
            _ => None,
        };
        let gemma = family == Family::Gemma3;
        Ok(Config {
            family,
            layers: positive("block_count")?,
            hidden,
            heads,
            kv_heads,
            head_dim,
            value_dim,
            rope_dims,
            rope_base,
            rope_base_local: gguf.opt_f64(&key("rope.freq_base_swa"))?.unwrap_or(10_000.0),
            rope_style: if family == Family::Llama { RopeStyle::Interleaved } else { RopeStyle::Halves },
            eps,
            context_length: positive("context_length")?,
            sliding_window,
            experts,
            activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
            embedding_scale: gemma.then(|| (hidden as f64).sqrt()),
            attention_scale: 1.0 / (head_dim as f64).sqrt(),
        })
    }

    /// Whether layer `i` attends within the sliding window only.
    pub fn is_local(&self, layer: usize) -> bool {
        self.sliding_window.is_some_and(|(_, pattern)| (layer + 1) % pattern != 0)
    }
}
