//! Architectures: one decoder built from parts, configured from the file's `<arch>.*` metadata.
//!
//! `general.architecture` picks a [`Family`]; the family fixes what the metadata cannot say
//! (RoPE layout, activation, embedding scaling, Gemma 3's sliding-window layer pattern), and the
//! tensors present say the rest (QKV bias, per-head Q/K norms, post-norms, experts).

pub mod attention;
pub(crate) mod math;
mod decoder;

/// The most values one token's row may hold (heads × head width, experts × their width):
/// 2^28, so that the shapes computed from the metadata are exact in a 32-bit usize (wasm32);
/// the tensors, which must have those shapes and lie in the file, bound them further.
const MAX_WIDTH: u64 = 1 << 28;

pub use decoder::{Mlp, Moe, State, Weights};
pub(crate) use decoder::route;

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// The `general.architecture` values candlewick runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "deepseek2"];

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
    /// `deepseek2`: multi-head latent attention, leading dense blocks, then experts with shared
    /// experts (DeepSeek-V2/V3, Kimi K2, Moonlight).
    DeepSeek2,
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

/// Which of llama.cpp's two attention computations a model's numerics follow. They agree in
/// value and differ in rounding, which a quantized model can amplify into other tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// Flash attention: an online softmax with an f16 value accumulator.
    Flash,
    /// The unfused product: a softmax over all scores, probabilities rounded to f16 to weight
    /// the values.
    Unfused,
}

/// How router logits become expert weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over all experts.
    Softmax,
    /// A sigmoid per expert (DeepSeek-V3, Kimi K2), usually with a selection bias.
    Sigmoid,
}

/// Mixture-of-experts settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Experts {
    /// Experts per layer.
    pub count: usize,
    /// Experts each token is routed to.
    pub used: usize,
    /// Width of one expert's feed-forward layer.
    pub ffn: usize,
    /// Whether the chosen experts' weights are renormalised to sum to one.
    pub normalize: bool,
    /// Factor applied to the chosen experts' weights.
    pub scale: f32,
    /// Router gating.
    pub gating: Gating,
    /// Group-limited routing: (groups, groups used); experts come only from the groups with the
    /// best sums of their two best scores.
    pub groups: Option<(usize, usize)>,
    /// Shared experts every token goes through (their feed-forward is `shared × ffn` wide).
    pub shared: usize,
    /// Leading blocks with a dense feed-forward instead of experts.
    pub leading_dense: usize,
}

/// Multi-head latent attention sizes (`deepseek2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latent {
    /// Rank of the compressed key-value projection.
    pub kv_rank: usize,
    /// Per-head query/key width without position (`nope`) and with RoPE (`rope`).
    pub nope: usize,
    /// Per-head width that RoPE rotates (shared by all heads on the key side).
    pub rope: usize,
    /// Per-head value width.
    pub value: usize,
    /// Whether the file stores the split `attn_k_b`/`attn_v_b` layout; attention then runs on
    /// the latent form and the KV cache holds `kv_rank + rope` values per token.
    pub absorbed: bool,
}

/// YaRN RoPE scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    /// Context extension factor (frequencies are scaled by its inverse).
    pub factor: f32,
    /// The context length the model was trained with before extension.
    pub original_context: usize,
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
    /// The attention computation to follow.
    pub attention_kernel: AttentionKernel,
    /// Latent attention sizes, for `deepseek2`.
    pub latent: Option<Latent>,
    /// YaRN RoPE scaling, when the file declares it.
    pub yarn: Option<Yarn>,
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
            "deepseek2" => Family::DeepSeek2,
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
        // A count that may be 0, in the same range.
        let count_of = |k: &str| -> Result<usize> {
            match gguf.opt_u64(&key(k))? {
                None | Some(0) => Ok(0),
                Some(_) => positive(k),
            }
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
        // The reference, llama.cpp through node-llama-cpp, turns flash attention off when the
        // file's key and value heads differ in width (every deepseek2 file); its default
        // (automatic) choice turns it on for the rest on CPUs.
        let file_value_length = gguf.opt_u64(&key("attention.value_length"))?.unwrap_or((hidden / heads) as u64);
        let attention_kernel = if file_value_length == head_dim as u64 { AttentionKernel::Flash } else { AttentionKernel::Unfused };
        let rope_dims = match gguf.get(&key("rope.dimension_count")) {
            Some(_) => positive("rope.dimension_count")?,
            None => head_dim,
        };
        if family != Family::DeepSeek2 && (rope_dims > head_dim || rope_dims % 2 != 0) {
            return Err(Error::InvalidMetadata {
                key: key("rope.dimension_count"),
                reason: format!("{rope_dims} must be even and at most the head width {head_dim}"),
            });
        }
        let rope_base = gguf.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let eps = gguf.f64(&key("attention.layer_norm_rms_epsilon"))?;
        let deepseek = family == Family::DeepSeek2;
        let experts = match count_of("expert_count")? {
            0 => None,
            count => {
                let used = positive("expert_used_count")?;
                if used > count {
                    return Err(Error::InvalidMetadata { key: key("expert_used_count"), reason: format!("{used} of {count} experts") });
                }
                let groups = match gguf.opt_u64(&key("expert_group_count"))? {
                    Some(g) if g > 1 => {
                        let used_groups = positive("expert_group_used_count")?;
                        if !(count as u64).is_multiple_of(g) || used_groups as u64 > g || (used_groups as u64 * count as u64 / g) < used as u64 {
                            return Err(Error::InvalidMetadata {
                                key: key("expert_group_count"),
                                reason: format!("{g} groups ({used_groups} used) do not fit {count} experts with {used} chosen"),
                            });
                        }
                        Some((g as usize, used_groups))
                    }
                    _ => None,
                };
                let gating = match gguf.opt_u64(&key("expert_gating_func"))? {
                    None | Some(0) | Some(1) => Gating::Softmax,
                    Some(2) => Gating::Sigmoid,
                    Some(other) => return Err(Error::InvalidMetadata { key: key("expert_gating_func"), reason: format!("unknown gating function {other}") }),
                };
                Some(Experts {
                    count,
                    used,
                    ffn: match gguf.get(&key("expert_feed_forward_length")) {
                        Some(_) => positive("expert_feed_forward_length")?,
                        None if !deepseek => positive("feed_forward_length")?,
                        None => return Err(Error::MissingMetadata { key: key("expert_feed_forward_length") }),
                    },
                    // Qwen3-MoE and Mixtral renormalise the chosen experts' weights; DeepSeek says.
                    normalize: if deepseek { gguf.opt_bool(&key("expert_weights_norm"))?.unwrap_or(false) } else { true },
                    scale: if deepseek { gguf.f64(&key("expert_weights_scale"))? as f32 } else { 1.0 },
                    gating,
                    groups,
                    shared: if deepseek { gguf.u64(&key("expert_shared_count")).and_then(|_| count_of("expert_shared_count"))? } else { 0 },
                    leading_dense: if deepseek { gguf.u64(&key("leading_dense_block_count")).and_then(|_| count_of("leading_dense_block_count"))? } else { 0 },
                })
            }
        };
        let mut latent = None;
        if deepseek {
            let absorbed = gguf.get(&key("attention.key_length_mla")).is_some();
            let (k_len, v_len) = if absorbed { ("attention.key_length_mla", "attention.value_length_mla") } else { ("attention.key_length", "attention.value_length") };
            let (head, value) = (positive(k_len)?, positive(v_len)?);
            let rope = positive("rope.dimension_count")?;
            if rope >= head || rope % 2 != 0 {
                return Err(Error::InvalidMetadata { key: key("rope.dimension_count"), reason: format!("{rope} must be even and below the key width {head}") });
            }
            latent = Some(Latent { kv_rank: positive("attention.kv_lora_rank")?, nope: head - rope, rope, value, absorbed });
        }
        // What the KV cache holds per token: the latent vector and the shared rotary key (one
        // "head") in the absorbed layout; full per-head keys and values otherwise.
        let (kv_heads, head_dim, value_dim) = match latent {
            Some(l) if l.absorbed => (1, l.kv_rank + l.rope, l.kv_rank),
            Some(l) => (heads, l.nope + l.rope, l.value),
            None => (kv_heads, head_dim, value_dim),
        };
        let yarn = match gguf.opt_str(&key("rope.scaling.type"))? {
            Some("yarn") => Some(Yarn {
                factor: gguf.f64(&key("rope.scaling.factor"))? as f32,
                original_context: positive("rope.scaling.original_context_length")?,
            }),
            _ => None,
        };
        let sliding_window = match (family, gguf.opt_u64(&key("attention.sliding_window"))?) {
            // Gemma 3 alternates five local layers with one global layer (llama.cpp's pattern).
            (Family::Gemma3, Some(w)) if w > 0 => Some((w as usize, 6)),
            _ => None,
        };
        let gemma = family == Family::Gemma3;
        // DeepSeek's YaRN also corrects the attention scale by mscale².
        let attention_scale = match (latent, yarn) {
            (Some(l), Some(y)) => {
                // llama.cpp's arithmetic, in f32. Converters store the log multiplier as
                // 0.1·mscale_all_dim; llama.cpp takes the 0.1 back out. Its YaRN attention factor
                // (1 + 0.1·ln factor, or 1 when there is a log multiplier) is cancelled out of
                // RoPE, which it leaves unscaled, and goes into the attention scale together with
                // the log multiplier's correction, squared.
                let factor = 1.0 / (1.0 / y.factor);
                let ln_factor = math::ln(factor);
                let log_mul = gguf.opt_f64(&key("rope.scaling.yarn_log_multiplier"))?.map_or(0.0, |v| v as f32 / 0.1);
                let yarn_attn_factor = if log_mul != 0.0 { 1.0 } else { 0.1 * ln_factor + 1.0 } * (1.0 / (1.0 + 0.1 * ln_factor));
                let mscale = yarn_attn_factor * (1.0 + 0.1 * ln_factor) * (1.0 + 0.1 * log_mul * ln_factor);
                (mscale * mscale / ((l.nope + l.rope) as f32).sqrt()) as f64
            }
            (Some(l), None) => 1.0 / ((l.nope + l.rope) as f64).sqrt(),
            _ => 1.0 / (head_dim as f64).sqrt(),
        };
        // Each value is at most 2^24, but the decoder multiplies them out into buffer sizes:
        // those must not wrap a 32-bit usize (wasm32), so the widths a token needs are bounded.
        let widths = [
            ("attention.head_count", heads as u64 * head_dim.max(value_dim) as u64),
            ("attention.head_count_kv", kv_heads as u64 * head_dim.max(value_dim) as u64),
            ("expert_count", experts.as_ref().map_or(0, |e| e.count as u64 * e.ffn.max(hidden) as u64)),
        ];
        for (k, width) in widths {
            if width > MAX_WIDTH {
                return Err(Error::InvalidMetadata { key: key(k), reason: format!("makes rows of {width} values (at most {MAX_WIDTH})") });
            }
        }
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
            rope_style: if matches!(family, Family::Llama | Family::DeepSeek2) { RopeStyle::Interleaved } else { RopeStyle::Halves },
            eps,
            context_length: positive("context_length")?,
            sliding_window,
            experts,
            activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
            embedding_scale: gemma.then(|| (hidden as f64).sqrt()),
            attention_scale,
            attention_kernel,
            latent,
            yarn,
        })
    }

    /// Whether layer `i` attends within the sliding window only.
    pub fn is_local(&self, layer: usize) -> bool {
        self.sliding_window.is_some_and(|(_, pattern)| !(layer + 1).is_multiple_of(pattern))
    }
}
