//! Architectures: one decoder built from parts, configured from the file's `<arch>.*` metadata.
//!
//! `general.architecture` picks a [`Family`]; the family fixes what the metadata cannot say
//! (RoPE layout, activation, embedding scaling, the sliding-window layer pattern, where the norms
//! sit), the metadata gives sizes, multipliers and soft-caps, and the tensors present say the
//! rest (QKV bias, Q/K norms, post-norms, experts, a shared expert's gate).

pub mod attention;
pub mod conv;
pub(crate) mod math;
mod decoder;

/// The most values one token's row may hold (heads × head width, experts × their width):
/// 2^28, so that the shapes computed from the metadata are exact in a 32-bit usize (wasm32);
/// the tensors, which must have those shapes and lie in the file, bound them further.
const MAX_WIDTH: u64 = 1 << 28;

pub use decoder::{Mlp, Moe, State, Weights};
pub(crate) use decoder::{route, shared_gate_weight};

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

/// The `general.architecture` values candlewick runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["llama", "mistral3", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "gemma2", "gemma3", "granite", "granitemoe", "olmo2", "phi3", "smollm3", "glm4", "glm4moe", "gpt-oss", "deepseek2", "lfm2", "lfm2moe", "llama4"];

/// A family of architectures sharing one layer layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama`: Llama, SmolLM2, Mistral-style models (also Mixtral-style experts).
    Llama,
    /// `qwen2`: QKV bias.
    Qwen2,
    /// `qwen2moe`: Qwen2 attention with experts and a shared expert behind a sigmoid gate.
    Qwen2Moe,
    /// `qwen3`: per-head Q/K RMS norms.
    Qwen3,
    /// `qwen3moe`: Qwen3 attention with a mixture of experts.
    Qwen3Moe,
    /// `gemma2`: scaled embeddings, GELU, post-norms, soft-capped attention scores and logits,
    /// sliding-window attention on every other layer.
    Gemma2,
    /// `gemma3`: scaled embeddings, GELU, post-norms, sliding-window layers.
    Gemma3,
    /// `granite`: Llama layers with embedding, residual, attention and logit multipliers;
    /// `granitemoe` the same with experts (softmax gating, weights renormalised).
    Granite,
    /// `olmo2`: norms after attention and feed-forward instead of before, Q/K norms over the
    /// whole projection.
    Olmo2,
    /// `smollm3`: Llama layers, every fourth without RoPE.
    SmolLm3,
    /// `phi3`: fused QKV and gate/up projections, partial rotary, LongRoPE factors.
    Phi3,
    /// `glm4`: GLM-4-0414: fused QKV (with bias) and gate/up projections, partial rotary,
    /// norms before and after attention and feed-forward.
    Glm4,
    /// `glm4moe`: GLM-4.5 / 4.5-Air / 4.6: leading dense blocks, then sigmoid-gated experts
    /// (selection bias, normalised and scaled weights) with shared experts; QKV bias, optional
    /// per-head Q/K norms, partial rotary; the feed-forward norm named `post_attention_norm`.
    Glm4Moe,
    /// `gpt-oss`: attention sinks, biases everywhere, sliding window on every other layer,
    /// YaRN, experts chosen by raw router logits and weighted by their softmax, a clamped
    /// SwiGLU.
    GptOss,
    /// `deepseek2`: multi-head latent attention, leading dense blocks, then experts with shared
    /// experts (DeepSeek-V2/V3, Kimi K2, Moonlight).
    DeepSeek2,
    /// `llama4`: Llama 4 (text): chunked attention on three layers of four, the fourth without
    /// RoPE and with the attention temperature; weightless Q/K norms after RoPE; experts chosen
    /// by their router logits, each weighing its input by its sigmoid, beside a shared expert.
    Llama4,
    /// `lfm2`: LiquidAI's LFM2: gated short convolutions in most layers' attention's place,
    /// attention with per-head Q/K norms in the others; `lfm2moe` the same with leading dense
    /// blocks, then experts (the gating the file names, a selection bias, weights normalised).
    Lfm2,
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
    /// gpt-oss's SwiGLU: the gate clamped above and the up projection on both sides at 7,
    /// `gate · σ(1.702 · gate) · (up + 1)`.
    SwigluOai,
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
    /// The raw logits choose; the chosen ones' softmax weighs (gpt-oss).
    SoftmaxOfChosen,
    /// The raw logits choose; each chosen one's sigmoid weighs (Llama 4).
    SigmoidOfChosen,
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
    /// Width of the shared experts' feed-forward every token goes through (0: none); DeepSeek's
    /// `n` shared experts are one feed-forward `n × ffn` wide.
    pub shared_ffn: usize,
    /// Leading blocks with a dense feed-forward instead of experts.
    pub leading_dense: usize,
    /// Every `interleave`-th block has experts (`(i + 1) % interleave == 0`), the others a dense
    /// feed-forward (Llama 4 Maverick's 2; 1 for the others: every block).
    pub interleave: usize,
    /// Whether each expert's weight multiplies its input rather than its output (Llama 4).
    pub weigh_inputs: bool,
}

impl Experts {
    /// Whether block `layer` has experts (else a dense feed-forward).
    pub fn in_layer(&self, layer: usize) -> bool {
        layer >= self.leading_dense && (layer + 1).is_multiple_of(self.interleave.max(1))
    }
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

/// An attention temperature: the queries at position `p` are multiplied by
/// `ln(⌊(p + offset) / length⌋ + 1) · scale + 1` (Mistral 3 after RoPE, Llama 4 on its layers
/// without RoPE).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature {
    /// The logarithm's factor.
    pub scale: f32,
    /// Positions per step of the floor.
    pub length: usize,
    /// Added to the position (Llama 4's 1).
    pub offset: f32,
    /// Whether only the layers without RoPE take it (Llama 4).
    pub nope_only: bool,
}

impl Temperature {
    /// The queries' factor at position `pos`, as llama.cpp computes it: the position and the
    /// floor in f32, the rest in f64, rounded once.
    pub fn at(&self, pos: usize) -> f32 {
        let step = ((pos as f32 + self.offset) / self.length as f32).floor();
        (libm::log(f64::from(step) + 1.0) * f64::from(self.scale) + 1.0) as f32
    }
}

/// LFM2's short convolutions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortConv {
    /// Positions the kernel spans, the current one included (`shortconv.l_cache`).
    pub kernel: usize,
    /// Whether each layer convolves (its `head_count_kv` is 0) rather than attends.
    pub layers: Vec<bool>,
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
    /// Every `n`-th layer (`(i + 1) % n == 0`) has no RoPE (SmolLM3's NoPE layers).
    pub no_rope_every: Option<usize>,
    /// Whether the attention scale multiplies the queries before their products with the keys
    /// (Gemma) rather than each product: equal in value, not in rounding.
    pub scale_queries: bool,
    /// Attention scores are soft-capped to `±cap`: `cap · tanh(score / cap)` (Gemma 2).
    pub attention_softcap: Option<f32>,
    /// The attention temperature (Mistral 3's over the original context, Llama 4's).
    pub attention_temperature: Option<Temperature>,
    /// Whether the local layers attend within chunks of the window's size (Llama 4: the
    /// positions from the query's multiple of it) rather than over a sliding window.
    pub chunked: bool,
    /// Queries and keys of the layers with RoPE are RMS-normalised, without weights, after RoPE
    /// (Llama 4's L2 norm, except in its 128-expert Maverick).
    pub qk_unit_norm: bool,
    /// The output logits are soft-capped the same way (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Factor the attention and feed-forward outputs are multiplied by before each residual
    /// addition (Granite).
    pub residual_scale: Option<f32>,
    /// The output logits are divided by this (Granite).
    pub logit_scale: Option<f32>,
    /// Whether each block normalises its input before attention and before the feed-forward;
    /// OLMo 2 normalises only their outputs (its post-norms).
    pub pre_norms: bool,
    /// Whether the Q/K norms span the whole projection (OLMo 2) rather than each head.
    pub qk_norm_whole: bool,
    /// The context length up to which RoPE takes the short factors (`rope_factors_short`) and
    /// beyond which the long ones, when the file has them (LongRoPE).
    pub rope_original_context: usize,
    /// Factor RoPE's cosines and sines are multiplied by (`rope.scaling.attn_factor`, Phi-3's
    /// LongRoPE).
    pub rope_mscale: f32,
    /// Layers that convolve instead of attending (LFM2).
    pub short_conv: Option<ShortConv>,
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
            "llama" | "mistral3" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen2moe" => Family::Qwen2Moe,
            "qwen3" => Family::Qwen3,
            "qwen3moe" => Family::Qwen3Moe,
            "gemma2" => Family::Gemma2,
            "gemma3" => Family::Gemma3,
            "granite" | "granitemoe" => Family::Granite,
            "olmo2" => Family::Olmo2,
            "smollm3" => Family::SmolLm3,
            "phi3" => Family::Phi3,
            "glm4" => Family::Glm4,
            "glm4moe" => Family::Glm4Moe,
            "gpt-oss" => Family::GptOss,
            "deepseek2" => Family::DeepSeek2,
            "lfm2" | "lfm2moe" => Family::Lfm2,
            "llama4" => Family::Llama4,
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
        // One count for every layer, or one per layer (LFM2's: 0 where a layer convolves, and
        // the same count in every layer that attends).
        let mut per_layer_kv = None;
        let kv_heads = match gguf.get(&key("attention.head_count_kv")) {
            Some(Value::Array(_)) => {
                let counts = gguf.int_array(&key("attention.head_count_kv"))?;
                let attending: Vec<i128> = counts.iter().copied().filter(|&n| n != 0).collect();
                let Some(&first) = attending.first().filter(|&&n| n > 0 && n <= 1 << 24 && attending.iter().all(|&m| m == n)) else {
                    return Err(Error::InvalidMetadata { key: key("attention.head_count_kv"), reason: format!("{counts:?} is not one count for the layers that attend") });
                };
                if family != Family::Lfm2 && attending.len() != counts.len() {
                    return Err(Error::InvalidMetadata { key: key("attention.head_count_kv"), reason: format!("{counts:?}: a layer without key/value heads in {arch}") });
                }
                per_layer_kv = Some(counts);
                first as usize
            }
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
        // GLM-4.1V's and GLM-4.5V's multimodal RoPE splits the rotated dimensions into sections
        // by axis.
        if matches!(family, Family::Glm4 | Family::Glm4Moe) && gguf.get(&key("rope.dimension_sections")).is_some() {
            return Err(Error::InvalidMetadata { key: key("rope.dimension_sections"), reason: "multimodal RoPE (GLM-4.1V, GLM-4.5V) is not supported".into() });
        }
        let eps = gguf.f64(&key("attention.layer_norm_rms_epsilon"))?;
        let deepseek = family == Family::DeepSeek2;
        // DeepSeek's and GLM-4.5's mixtures: shared experts counted in experts' widths, leading
        // dense blocks, the chosen weights normalised and scaled as the file says.
        let deepseek_moe = matches!(family, Family::DeepSeek2 | Family::Glm4Moe);
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
                    _ if family == Family::GptOss => Gating::SoftmaxOfChosen,
                    // llama.cpp fixes Llama 4's.
                    _ if family == Family::Llama4 => Gating::SigmoidOfChosen,
                    // GLM-4.5's files may leave it out: llama.cpp then takes the sigmoid.
                    None | Some(0) if family == Family::Glm4Moe => Gating::Sigmoid,
                    // llama.cpp needs LFM2-MoE's files to name it.
                    None if family == Family::Lfm2 => return Err(Error::MissingMetadata { key: key("expert_gating_func") }),
                    None | Some(0) | Some(1) => Gating::Softmax,
                    Some(2) => Gating::Sigmoid,
                    Some(other) => return Err(Error::InvalidMetadata { key: key("expert_gating_func"), reason: format!("unknown gating function {other}") }),
                };
                let ffn = match gguf.get(&key("expert_feed_forward_length")) {
                    Some(_) => positive("expert_feed_forward_length")?,
                    None if !deepseek_moe && !matches!(family, Family::Qwen2Moe | Family::Llama4 | Family::Lfm2) => positive("feed_forward_length")?,
                    None => return Err(Error::MissingMetadata { key: key("expert_feed_forward_length") }),
                };
                Some(Experts {
                    count,
                    used,
                    ffn,
                    // Qwen3-MoE and Mixtral renormalise the chosen experts' weights, Qwen2-MoE does
                    // not; DeepSeek and GLM-4.5 say.
                    normalize: match family {
                        Family::DeepSeek2 | Family::Glm4Moe => gguf.opt_bool(&key("expert_weights_norm"))?.unwrap_or(false),
                        Family::Qwen2Moe | Family::GptOss | Family::Llama4 => false,
                        _ => true,
                    },
                    scale: match family {
                        Family::DeepSeek2 => gguf.f64(&key("expert_weights_scale"))? as f32,
                        Family::Glm4Moe => gguf.opt_f64(&key("expert_weights_scale"))?.map_or(1.0, |v| v as f32),
                        _ => 1.0,
                    },
                    gating,
                    groups,
                    shared_ffn: match family {
                        Family::DeepSeek2 | Family::Glm4Moe => gguf.u64(&key("expert_shared_count")).and_then(|_| count_of("expert_shared_count"))? * ffn,
                        Family::Qwen2Moe => positive("expert_shared_feed_forward_length")?,
                        // Llama 4's one shared expert is as wide as the others.
                        Family::Llama4 => ffn,
                        _ => 0,
                    },
                    leading_dense: match family {
                        Family::DeepSeek2 => gguf.u64(&key("leading_dense_block_count")).and_then(|_| count_of("leading_dense_block_count"))?,
                        Family::Glm4Moe | Family::Lfm2 => count_of("leading_dense_block_count")?,
                        _ => 0,
                    },
                    interleave: if family == Family::Llama4 { positive("interleave_moe_layer_step")? } else { 1 },
                    weigh_inputs: family == Family::Llama4,
                })
            }
        };
        if family == Family::Llama4 && experts.is_none() {
            return Err(Error::MissingMetadata { key: key("expert_count") });
        }
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
            // llama.cpp fixes Llama 4's chunks at 8192 positions and its pattern at three chunked
            // layers to one global unless the file gives another; a window of 0 would leave
            // every layer global and the last without RoPE, which llama.cpp does not run either.
            (Family::Llama4, Some(0)) => {
                return Err(Error::InvalidMetadata { key: key("attention.sliding_window"), reason: "Llama 4 without chunked attention is not supported".into() })
            }
            (Family::Llama4, _) => Some((8192, gguf.opt_u64(&key("attention.sliding_window_pattern"))?.map_or(Ok(4), |_| positive("attention.sliding_window_pattern"))?)),
            // Every attention layer of an LFM2 with a window is local (the pattern never comes
            // round).
            (Family::Lfm2, Some(w)) if w > 0 => Some((w as usize, usize::MAX)),
            // Gemma 3 alternates five local layers with one global layer (llama.cpp's pattern).
            (Family::Gemma3, Some(w)) if w > 0 => Some((w as usize, 6)),
            // Gemma 2 alternates one and one, over 4096 positions unless the file says otherwise.
            (Family::Gemma2, w) => Some((w.filter(|&w| w > 0).unwrap_or(4096) as usize, 2)),
            // gpt-oss alternates one and one too, over the window its file gives.
            (Family::GptOss, _) => Some((positive("attention.sliding_window")?, 2)),
            _ => None,
        };
        let gemma = matches!(family, Family::Gemma2 | Family::Gemma3);
        let granite = family == Family::Granite;
        // A multiplier the file may give (0 and absent mean none), and one it must give.
        let factor = |k: &str| -> Result<Option<f32>> {
            match gguf.opt_f64(&key(k))? {
                Some(v) if !(v.is_finite()) || v < 0.0 => Err(Error::InvalidMetadata { key: key(k), reason: format!("{v} is not a positive factor") }),
                Some(v) if v != 0.0 => Ok(Some(v as f32)),
                _ => Ok(None),
            }
        };
        let required = |k: &str| factor(k)?.ok_or_else(|| Error::MissingMetadata { key: key(k) });
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
            // Granite's file gives it; the others take llama.cpp's f32 1/√head_dim.
            _ => match factor("attention.scale")?.filter(|_| granite) {
                Some(scale) => scale as f64,
                None => (1.0 / (head_dim as f32).sqrt()) as f64,
            },
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
        // The last `nextn_predict_layers` blocks predict tokens further ahead (GLM-4.5's and
        // DeepSeek-V3's multi-token prediction); llama.cpp leaves them out of inference, and so
        // does this decoder: their tensors stay unread.
        let blocks = positive("block_count")?;
        let nextn = count_of("nextn_predict_layers")?;
        if nextn >= blocks {
            return Err(Error::InvalidMetadata { key: key("nextn_predict_layers"), reason: format!("{nextn} of {blocks} blocks leave none to run") });
        }
        let layers = blocks - nextn;
        let short_conv = match family {
            Family::Lfm2 => {
                let kernel = positive("shortconv.l_cache")?;
                if kernel < 2 {
                    return Err(Error::InvalidMetadata { key: key("shortconv.l_cache"), reason: format!("a kernel of {kernel} positions remembers none") });
                }
                // One count for all layers: they all attend, as llama.cpp reads it.
                let convolves = match per_layer_kv {
                    Some(counts) if counts.len() >= layers => counts[..layers].iter().map(|&n| n == 0).collect(),
                    Some(counts) => {
                        return Err(Error::InvalidMetadata { key: key("attention.head_count_kv"), reason: format!("{} counts for {layers} layers", counts.len()) })
                    }
                    None => vec![false; layers],
                };
                Some(ShortConv { kernel, layers: convolves })
            }
            _ => None,
        };
        Ok(Config {
            family,
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            value_dim,
            rope_dims,
            rope_base,
            // llama.cpp fixes Gemma 3's local base at 10 000; the others keep the global one.
            rope_base_local: gguf.opt_f64(&key("rope.freq_base_swa"))?.unwrap_or(if family == Family::Gemma3 { 10_000.0 } else { rope_base }),
            rope_style: match family {
                Family::Llama | Family::DeepSeek2 | Family::Granite | Family::SmolLm3 | Family::Glm4 | Family::Llama4 => RopeStyle::Interleaved,
                _ => RopeStyle::Halves,
            },
            eps,
            context_length: positive("context_length")?,
            sliding_window,
            experts,
            activation: match family {
                _ if gemma => Activation::GeluTanh,
                Family::GptOss => Activation::SwigluOai,
                _ => Activation::Silu,
            },
            embedding_scale: match family {
                _ if gemma => Some((hidden as f64).sqrt()),
                Family::Granite => factor("embedding_scale")?.map(f64::from),
                _ => None,
            },
            attention_scale,
            attention_kernel,
            latent,
            yarn,
            // llama.cpp fixes the step at 4 for SmolLM3 and Llama 4; the file does not say it.
            no_rope_every: matches!(family, Family::SmolLm3 | Family::Llama4).then_some(4),
            scale_queries: gemma || family == Family::Phi3,
            attention_softcap: if family == Family::Gemma2 { Some(required("attn_logit_softcapping")?) } else { None },
            attention_temperature: match factor("attention.temperature_scale")? {
                Some(scale) if arch == "mistral3" => Some(Temperature {
                    scale,
                    length: match gguf.opt_u64(&key("rope.scaling.original_context_length"))? {
                        Some(_) => positive("rope.scaling.original_context_length")?,
                        None => positive("context_length")?,
                    },
                    offset: 0.0,
                    nope_only: false,
                }),
                // llama.cpp fixes Llama 4's.
                _ if family == Family::Llama4 => Some(Temperature { scale: 0.1, length: 8192, offset: 1.0, nope_only: true }),
                _ => None,
            },
            chunked: family == Family::Llama4,
            qk_unit_norm: family == Family::Llama4 && experts.is_some_and(|e| e.count != 128),
            final_softcap: if family == Family::Gemma2 { Some(required("final_logit_softcapping")?) } else { None },
            residual_scale: if granite { factor("residual_scale")? } else { None },
            logit_scale: if granite { Some(required("logit_scale")?) } else { None },
            pre_norms: family != Family::Olmo2,
            qk_norm_whole: family == Family::Olmo2,
            rope_original_context: match gguf.get(&key("rope.scaling.original_context_length")) {
                Some(_) => positive("rope.scaling.original_context_length")?,
                None => positive("context_length")?,
            },
            rope_mscale: match (yarn, latent) {
                // llama.cpp's YaRN: its attention factor (1 + 0.1·ln factor) cancelled by its
                // inverse, then RoPE's rotation scaled by 1 + 0.1·ln(1 / frequency scale); all in
                // f32. (DeepSeek's goes into its attention scale instead, above.)
                (Some(y), None) => {
                    let ln_factor = math::ln(y.factor);
                    let cancelled = (0.1 * ln_factor + 1.0) * (1.0 / (1.0 + 0.1 * ln_factor));
                    cancelled * (1.0 + 0.1 * math::ln(1.0 / (1.0 / y.factor)))
                }
                _ => factor("rope.scaling.attn_factor")?.unwrap_or(1.0),
            },
            short_conv,
        })
    }

    /// Whether layer `i` attends within the sliding window only.
    pub fn is_local(&self, layer: usize) -> bool {
        self.sliding_window.is_some_and(|(_, pattern)| !(layer + 1).is_multiple_of(pattern))
    }

    /// Whether layer `i` convolves instead of attending (LFM2).
    pub fn is_conv(&self, layer: usize) -> bool {
        self.short_conv.as_ref().is_some_and(|s| s.layers.get(layer).copied().unwrap_or(false))
    }

    /// Whether layer `i` rotates its queries and keys.
    pub fn has_rope(&self, layer: usize) -> bool {
        !self.no_rope_every.is_some_and(|n| (layer + 1).is_multiple_of(n))
    }
}
