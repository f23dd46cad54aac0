//! Small synthetic GGUF models with random weights and a real tokenizer (copied from the
//! Qwen2.5-Coder file), for architectures whose real weights cannot be had here.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use candlewick::gguf::{ggml_type_block, Gguf, Value};
use candlewick::kernels::QMatrix;

use super::gguf_writer::{s, GgufFile, Meta};
use super::quants::random_blocks;

/// A deterministic xorshift generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// ggml type ids.
pub const F32: u32 = 0;
pub const Q8_0: u32 = 8;
pub const Q4_K: u32 = 12;
pub const MXFP4: u32 = 39;

/// `values` quantized to Q8_0 blocks (32 values: an f16 scale, 32 signed bytes).
pub fn q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * inv).round() as i8 as u8));
    }
    out
}

/// `values` as ggml type `ggml_type`: f32, Q8_0 quantized, or random blocks of another type
/// with the values' root mean square (any blocks with finite scales are valid weights; these
/// formats have no quantizer here).
fn encoded(ggml_type: u32, values: &[f32]) -> Vec<u8> {
    match ggml_type {
        F32 => f32_bytes(values),
        Q8_0 => q8_0(values),
        _ => {
            let rms = (values.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() / values.len().max(1) as f64).sqrt() as f32;
            // Seeded by the values, so the same file comes out every time.
            let first = values.first().map_or(0, |v| u64::from(v.to_bits()));
            let mut rng = Rng::new((first ^ ((values.len() as u64) << 32)) | 1);
            random_blocks(ggml_type, values.len(), rms, &mut rng)
        }
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The tokenizer metadata of a real file, as writer entries.
pub fn tokenizer_metadata(gguf: &Gguf) -> Vec<(String, Meta)> {
    let mut out = Vec::new();
    let mut keys: Vec<&String> = gguf.metadata.keys().filter(|k| k.starts_with("tokenizer.")).collect();
    keys.sort();
    for key in keys {
        let meta = match &gguf.metadata[key] {
            Value::String(v) => Meta::Str(v.clone()),
            Value::Bool(v) => Meta::Bool(*v),
            Value::Array(items) => match items.first() {
                Some(Value::String(_)) => Meta::Strs(items.iter().map(|v| if let Value::String(s) = v { s.clone() } else { String::new() }).collect()),
                Some(Value::F32(_)) => Meta::F32s(items.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect()),
                _ => Meta::I32s(items.iter().map(|v| v.as_i128().unwrap_or(0) as i32).collect()),
            },
            other => match other.as_i128() {
                Some(n) => Meta::U32(n as u32),
                None => Meta::F32(other.as_f64().unwrap_or(0.0) as f32),
            },
        };
        out.push((key.clone(), meta));
    }
    out
}

/// Tokens in a real file's vocabulary.
fn vocab_size(gguf: &Gguf) -> usize {
    match gguf.get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) => t.len(),
        _ => panic!("the tokenizer source has no tokens"),
    }
}

/// Sizes of a synthetic Qwen3 / Qwen3-MoE model.
pub struct Shape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    /// (experts, used per token, expert ffn width) for qwen3moe.
    pub experts: Option<(usize, usize, usize)>,
}

/// Writes a `qwen3` (or, with experts, `qwen3moe`) file with random weights and the tokenizer of
/// `tokenizer_source`, and returns its path (under the system temp dir).
pub fn qwen3_file(tokenizer_source: &Gguf, shape: &Shape, seed: u64, name: &str) -> PathBuf {
    let arch = if shape.experts.is_some() { "qwen3moe" } else { "qwen3" };
    let vocab = vocab_size(tokenizer_source);
    let mut rng = Rng::new(seed);
    let mut random = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.uniform() * scale).collect() };
    let k = |key: &str| format!("{arch}.{key}");
    let (h, hd) = (shape.hidden, shape.head_dim);
    let mut f = GgufFile::new()
        .meta("general.architecture", s(arch))
        .meta("general.name", s(name))
        .meta(&k("block_count"), Meta::U32(shape.layers as u32))
        .meta(&k("context_length"), Meta::U32(4096))
        .meta(&k("embedding_length"), Meta::U32(h as u32))
        .meta(&k("feed_forward_length"), Meta::U32(shape.ffn as u32))
        .meta(&k("attention.head_count"), Meta::U32(shape.heads as u32))
        .meta(&k("attention.head_count_kv"), Meta::U32(shape.kv_heads as u32))
        .meta(&k("attention.key_length"), Meta::U32(hd as u32))
        .meta(&k("attention.value_length"), Meta::U32(hd as u32))
        .meta(&k("rope.freq_base"), Meta::F32(1_000_000.0))
        .meta(&k("attention.layer_norm_rms_epsilon"), Meta::F32(1e-6));
    if let Some((count, used, ffn)) = shape.experts {
        f = f
            .meta(&k("expert_count"), Meta::U32(count as u32))
            .meta(&k("expert_used_count"), Meta::U32(used as u32))
            .meta(&k("expert_feed_forward_length"), Meta::U32(ffn as u32));
    }
    for (key, meta) in tokenizer_metadata(tokenizer_source) {
        f = f.meta(&key, meta);
    }
    let norm = |rng: &mut dyn FnMut(usize, f32) -> Vec<f32>, n: usize| -> Vec<u8> { f32_bytes(&rng(n, 0.2).iter().map(|v| 1.0 + v).collect::<Vec<_>>()) };
    // Large enough weights that the top logits are well separated (no near-ties).
    f = f.tensor("token_embd.weight", &[h as u64, vocab as u64], Q8_0, q8_0(&random(h * vocab, 1.0)));
    f = f.tensor("output_norm.weight", &[h as u64], F32, norm(&mut random, h));
    let linear = |rng: &mut dyn FnMut(usize, f32) -> Vec<f32>, inputs: usize, outputs: usize| q8_0(&rng(inputs * outputs, 2.0 / (inputs as f32).sqrt()));
    for i in 0..shape.layers {
        let p = |n: &str| format!("blk.{i}.{n}");
        let (q, kv) = ((shape.heads * hd) as u64, (shape.kv_heads * hd) as u64);
        f = f
            .tensor(&p("attn_norm.weight"), &[h as u64], F32, norm(&mut random, h))
            .tensor(&p("attn_q.weight"), &[h as u64, q], Q8_0, linear(&mut random, h, q as usize))
            .tensor(&p("attn_k.weight"), &[h as u64, kv], Q8_0, linear(&mut random, h, kv as usize))
            .tensor(&p("attn_v.weight"), &[h as u64, kv], Q8_0, linear(&mut random, h, kv as usize))
            .tensor(&p("attn_output.weight"), &[q, h as u64], Q8_0, linear(&mut random, q as usize, h))
            .tensor(&p("attn_q_norm.weight"), &[hd as u64], F32, norm(&mut random, hd))
            .tensor(&p("attn_k_norm.weight"), &[hd as u64], F32, norm(&mut random, hd))
            .tensor(&p("ffn_norm.weight"), &[h as u64], F32, norm(&mut random, h));
        match shape.experts {
            None => {
                let ff = shape.ffn as u64;
                f = f
                    .tensor(&p("ffn_gate.weight"), &[h as u64, ff], Q8_0, linear(&mut random, h, ff as usize))
                    .tensor(&p("ffn_up.weight"), &[h as u64, ff], Q8_0, linear(&mut random, h, ff as usize))
                    .tensor(&p("ffn_down.weight"), &[ff, h as u64], Q8_0, linear(&mut random, ff as usize, h));
            }
            Some((count, _, ffn)) => {
                let (n, ff) = (count as u64, ffn as u64);
                f = f
                    .tensor(&p("ffn_gate_inp.weight"), &[h as u64, n], F32, f32_bytes(&random(h * count, 1.0)))
                    .tensor(&p("ffn_gate_exps.weight"), &[h as u64, ff, n], Q8_0, linear(&mut random, h, ffn * count))
                    .tensor(&p("ffn_up_exps.weight"), &[h as u64, ff, n], Q8_0, linear(&mut random, h, ffn * count))
                    .tensor(&p("ffn_down_exps.weight"), &[ff, h as u64, n], Q8_0, linear(&mut random, ffn, h * count));
            }
        }
    }
    let path = std::env::temp_dir().join(format!("candlewick-test-{}-{name}.gguf", std::process::id()));
    std::fs::write(&path, f.bytes()).unwrap();
    path
}

/// Every metadata entry of a real file, as writer entries.
pub fn all_metadata(gguf: &Gguf) -> Vec<(String, Meta)> {
    let mut out = tokenizer_metadata(gguf);
    let mut keys: Vec<&String> = gguf.metadata.keys().filter(|k| !k.starts_with("tokenizer.")).collect();
    keys.sort();
    for key in keys {
        let meta = match &gguf.metadata[key] {
            Value::String(v) => Meta::Str(v.clone()),
            Value::Bool(v) => Meta::Bool(*v),
            Value::F32(v) => Meta::F32(*v),
            Value::Array(_) => continue,
            other => Meta::U32(other.as_i128().unwrap_or(0) as u32),
        };
        out.push((key.clone(), meta));
    }
    out
}

/// A copy of a real file with every tensor dequantized to f32, under the system temp dir.
pub fn dequantized_copy<R: Read + Seek>(gguf: &Gguf, reader: &mut R, name: &str) -> PathBuf {
    let mut f = GgufFile::new();
    for (key, meta) in all_metadata(gguf) {
        f = f.meta(&key, meta);
    }
    for t in &gguf.tensors {
        let (per_block, block_bytes) = ggml_type_block(t.ggml_type).unwrap();
        let mut bytes = vec![0u8; (t.elements() / per_block * block_bytes) as usize];
        reader.seek(SeekFrom::Start(gguf.data_offset + t.offset)).unwrap();
        reader.read_exact(&mut bytes).unwrap();
        let cols = t.dims[0] as usize;
        let rows = (t.elements() / t.dims[0]) as usize;
        let values = QMatrix::new(t.ggml_type, bytes, rows, cols).unwrap().to_f32().unwrap();
        f = f.tensor(&t.name, &t.dims, F32, f32_bytes(&values));
    }
    let path = std::env::temp_dir().join(format!("candlewick-test-{}-{name}.gguf", std::process::id()));
    std::fs::write(&path, f.bytes()).unwrap();
    path
}

/// A synthetic `deepseek2` model's sizes and options.
pub struct DeepSeek2 {
    pub layers: usize,
    pub leading_dense: usize,
    pub hidden: usize,
    pub heads: usize,
    /// `None`: a plain query projection.
    pub q_rank: Option<usize>,
    pub kv_rank: usize,
    pub nope: usize,
    pub rope: usize,
    pub value: usize,
    pub ffn: usize,
    pub experts: usize,
    pub used: usize,
    pub expert_ffn: usize,
    pub shared: usize,
    /// Sigmoid gating with an expert selection bias (else softmax without one).
    pub sigmoid: bool,
    /// (groups, groups used)
    pub groups: Option<(usize, usize)>,
    /// The split `attn_k_b`/`attn_v_b` layout (else the combined `attn_kv_b`).
    pub split_kv: bool,
    /// YaRN (factor, original context).
    pub yarn: Option<(f32, u32)>,
    pub normalize: bool,
    pub scale: f32,
    /// Every weight stored as f32 rather than Q8_0: no activation is then quantized to 8 bits
    /// on its way into a product, so what two engines' float rounding differs by is not
    /// amplified into a different quantized value.
    pub f32_weights: bool,
}

/// Writes a `deepseek2` file with random weights and the tokenizer of `tokenizer_source`.
pub fn deepseek2_file(tokenizer_source: &Gguf, d: &DeepSeek2, seed: u64, name: &str, leave_out: Option<&str>) -> PathBuf {
    let vocab = vocab_size(tokenizer_source);
    let mut rng = Rng::new(seed);
    let mut random = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.uniform() * scale).collect() };
    let k = |key: &str| format!("deepseek2.{key}");
    let h = d.hidden;
    let (head_k, head_v, kv_heads) = if d.split_kv { (d.kv_rank + d.rope, d.kv_rank, 1) } else { (d.nope + d.rope, d.value, d.heads) };
    let mut f = GgufFile::new()
        .meta("general.architecture", s("deepseek2"))
        .meta("general.name", s(name))
        .meta(&k("block_count"), Meta::U32(d.layers as u32))
        .meta(&k("context_length"), Meta::U32(4096))
        .meta(&k("embedding_length"), Meta::U32(h as u32))
        .meta(&k("feed_forward_length"), Meta::U32(d.ffn as u32))
        .meta(&k("attention.head_count"), Meta::U32(d.heads as u32))
        .meta(&k("attention.head_count_kv"), Meta::U32(kv_heads as u32))
        .meta(&k("attention.key_length"), Meta::U32(head_k as u32))
        .meta(&k("attention.value_length"), Meta::U32(head_v as u32))
        .meta(&k("attention.layer_norm_rms_epsilon"), Meta::F32(1e-6))
        .meta(&k("attention.q_lora_rank"), Meta::U32(d.q_rank.unwrap_or(0) as u32))
        .meta(&k("attention.kv_lora_rank"), Meta::U32(d.kv_rank as u32))
        .meta(&k("rope.freq_base"), Meta::F32(10_000.0))
        .meta(&k("rope.dimension_count"), Meta::U32(d.rope as u32))
        .meta(&k("leading_dense_block_count"), Meta::U32(d.leading_dense as u32))
        .meta(&k("expert_count"), Meta::U32(d.experts as u32))
        .meta(&k("expert_used_count"), Meta::U32(d.used as u32))
        .meta(&k("expert_feed_forward_length"), Meta::U32(d.expert_ffn as u32))
        .meta(&k("expert_shared_count"), Meta::U32(d.shared as u32))
        .meta(&k("expert_weights_scale"), Meta::F32(d.scale))
        .meta(&k("expert_weights_norm"), Meta::Bool(d.normalize))
        .meta(&k("expert_gating_func"), Meta::U32(if d.sigmoid { 2 } else { 1 }));
    if d.split_kv {
        f = f.meta(&k("attention.key_length_mla"), Meta::U32((d.nope + d.rope) as u32)).meta(&k("attention.value_length_mla"), Meta::U32(d.value as u32));
    }
    if let Some((groups, used)) = d.groups {
        f = f.meta(&k("expert_group_count"), Meta::U32(groups as u32)).meta(&k("expert_group_used_count"), Meta::U32(used as u32));
    }
    if let Some((factor, original)) = d.yarn {
        f = f
            .meta(&k("rope.scaling.type"), s("yarn"))
            .meta(&k("rope.scaling.factor"), Meta::F32(factor))
            .meta(&k("rope.scaling.original_context_length"), Meta::U32(original))
            .meta(&k("rope.scaling.yarn_log_multiplier"), Meta::F32(0.1));
    }
    for (key, meta) in tokenizer_metadata(tokenizer_source) {
        f = f.meta(&key, meta);
    }
    let norm = |rng: &mut dyn FnMut(usize, f32) -> Vec<f32>, n: usize| -> Vec<u8> { f32_bytes(&rng(n, 0.2).iter().map(|v| 1.0 + v).collect::<Vec<_>>()) };
    let wtype = if d.f32_weights { F32 } else { Q8_0 };
    let encode = |values: &[f32]| if d.f32_weights { f32_bytes(values) } else { q8_0(values) };
    let linear = |rng: &mut dyn FnMut(usize, f32) -> Vec<f32>, inputs: usize, outputs: usize| encode(&rng(inputs * outputs, 2.0 / (inputs as f32).sqrt()));
    f = f.tensor("token_embd.weight", &[h as u64, vocab as u64], wtype, encode(&random(h * vocab, 1.0)));
    f = f.tensor("output_norm.weight", &[h as u64], F32, norm(&mut random, h));
    let u = |n: usize| n as u64;
    for i in 0..d.layers {
        let p = |n: &str| format!("blk.{i}.{n}");
        let q_width = d.heads * (d.nope + d.rope);
        f = f.tensor(&p("attn_norm.weight"), &[u(h)], F32, norm(&mut random, h)).tensor(&p("ffn_norm.weight"), &[u(h)], F32, norm(&mut random, h));
        f = match d.q_rank {
            Some(r) => f
                .tensor(&p("attn_q_a.weight"), &[u(h), u(r)], wtype, linear(&mut random, h, r))
                .tensor(&p("attn_q_a_norm.weight"), &[u(r)], F32, norm(&mut random, r))
                .tensor(&p("attn_q_b.weight"), &[u(r), u(q_width)], wtype, linear(&mut random, r, q_width)),
            None => f.tensor(&p("attn_q.weight"), &[u(h), u(q_width)], wtype, linear(&mut random, h, q_width)),
        };
        f = f
            .tensor(&p("attn_kv_a_mqa.weight"), &[u(h), u(d.kv_rank + d.rope)], wtype, linear(&mut random, h, d.kv_rank + d.rope))
            .tensor(&p("attn_kv_a_norm.weight"), &[u(d.kv_rank)], F32, norm(&mut random, d.kv_rank))
            .tensor(&p("attn_output.weight"), &[u(d.heads * d.value), u(h)], wtype, linear(&mut random, d.heads * d.value, h));
        f = if d.split_kv {
            f.tensor(&p("attn_k_b.weight"), &[u(d.nope), u(d.kv_rank), u(d.heads)], wtype, linear(&mut random, d.nope, d.kv_rank * d.heads))
                .tensor(&p("attn_v_b.weight"), &[u(d.kv_rank), u(d.value), u(d.heads)], wtype, linear(&mut random, d.kv_rank, d.value * d.heads))
        } else {
            f.tensor(&p("attn_kv_b.weight"), &[u(d.kv_rank), u(d.heads * (d.nope + d.value))], wtype, linear(&mut random, d.kv_rank, d.heads * (d.nope + d.value)))
        };
        if i < d.leading_dense {
            f = f
                .tensor(&p("ffn_gate.weight"), &[u(h), u(d.ffn)], wtype, linear(&mut random, h, d.ffn))
                .tensor(&p("ffn_up.weight"), &[u(h), u(d.ffn)], wtype, linear(&mut random, h, d.ffn))
                .tensor(&p("ffn_down.weight"), &[u(d.ffn), u(h)], wtype, linear(&mut random, d.ffn, h));
            continue;
        }
        let (n, ff) = (d.experts, d.expert_ffn);
        f = f
            .tensor(&p("ffn_gate_inp.weight"), &[u(h), u(n)], F32, f32_bytes(&random(h * n, 0.5)))
            .tensor(&p("ffn_gate_exps.weight"), &[u(h), u(ff), u(n)], wtype, linear(&mut random, h, ff * n))
            .tensor(&p("ffn_up_exps.weight"), &[u(h), u(ff), u(n)], wtype, linear(&mut random, h, ff * n))
            .tensor(&p("ffn_down_exps.weight"), &[u(ff), u(h), u(n)], wtype, linear(&mut random, ff, h * n));
        if d.sigmoid {
            f = f.tensor(&p("exp_probs_b.bias"), &[u(n)], F32, f32_bytes(&random(n, 0.1)));
        }
        if d.shared > 0 {
            let sf = ff * d.shared;
            f = f
                .tensor(&p("ffn_gate_shexp.weight"), &[u(h), u(sf)], wtype, linear(&mut random, h, sf))
                .tensor(&p("ffn_up_shexp.weight"), &[u(h), u(sf)], wtype, linear(&mut random, h, sf))
                .tensor(&p("ffn_down_shexp.weight"), &[u(sf), u(h)], wtype, linear(&mut random, sf, h));
        }
    }
    if let Some(key) = leave_out {
        f = f.without(key);
    }
    let path = std::env::temp_dir().join(format!("candlewick-test-{}-{name}.gguf", std::process::id()));
    std::fs::write(&path, f.bytes()).unwrap();
    path
}

/// Q/K norms of a synthetic model.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// `[head_dim]`, applied to each head.
    PerHead,
    /// `[heads·head_dim]` / `[kv_heads·head_dim]`, over the whole projection (OLMo 2).
    Whole,
}

/// A synthetic model of one of the architectures built from Llama's parts: its sizes, which of
/// the parts it has (as llama.cpp's loader names and shapes them), and its own metadata.
#[derive(Clone)]
pub struct Blocks {
    /// `general.architecture`.
    pub arch: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    /// `attn_norm` / `ffn_norm` before attention and feed-forward.
    pub pre_norms: bool,
    /// `post_attention_norm` / `post_ffw_norm` after them.
    pub post_norms: bool,
    pub qk_norm: QkNorm,
    /// Biases on the Q, K and V projections.
    pub qkv_bias: bool,
    /// One `attn_qkv` projection for the three (Phi-3).
    pub fused_qkv: bool,
    /// Biases on the attention output, the router and the experts (gpt-oss).
    pub biases: bool,
    /// `attn_sinks`, a logit per query head (gpt-oss).
    pub sinks: bool,
    /// The name of the norm before the feed-forward (`post_attention_norm` in gpt-oss).
    pub ffn_norm: &'static str,
    /// One `ffn_up` projection twice `ffn` wide, gate rows first, and no `ffn_gate` (Phi-3).
    pub fused_gate_up: bool,
    /// Dimensions of each head RoPE rotates (all when `None`).
    pub rope_dims: Option<usize>,
    /// Global `rope_factors_long` and `rope_factors_short` tensors (LongRoPE).
    pub rope_factors: bool,
    /// (experts, used per token, expert ffn width).
    pub experts: Option<(usize, usize, usize)>,
    /// A shared expert's ffn width, and whether a sigmoid gate `ffn_gate_inp_shexp` weighs it
    /// (Qwen2-MoE's, whose width `expert_shared_feed_forward_length` gives; an ungated one's
    /// count is the architecture's own key).
    pub shared_expert: Option<(usize, bool)>,
    /// Leading blocks with a dense feed-forward before the experts' blocks.
    pub leading_dense: usize,
    /// Every `moe_every`-th block has the experts (`(i + 1) % moe_every == 0`), the others a
    /// dense feed-forward (Llama 4's `interleave_moe_layer_step`, which the test gives).
    pub moe_every: usize,
    /// An expert-selection bias `exp_probs_b` in each experts' block.
    pub probs_bias: bool,
    /// Multi-token-prediction blocks after the others (`nextn_predict_layers`), with their
    /// `nextn.*` tensors, which inference leaves out.
    pub nextn: usize,
    /// LFM2's short convolutions: the kernel's length and the layers that attend (the others
    /// convolve; `head_count_kv` is then one count per layer, 0 where a layer convolves).
    pub short_conv: Option<(usize, &'static [usize])>,
    /// The final norm's name (`token_embd_norm` in LFM2).
    pub output_norm: &'static str,
    /// No `output.weight`: the output layer is the embedding table.
    pub tied_output: bool,
    /// The architecture's own keys (without the `<arch>.` prefix) and values.
    pub metadata: Vec<(&'static str, Meta)>,

    /// The ggml type of every matrix: [`F32`] (see [`DeepSeek2::f32_weights`]), [`Q8_0`]
    /// (quantized from the random values) or any type [`random_blocks`] writes (random blocks
    /// with the values' spread).
    pub weights: u32,
    /// The experts' type when it is not `weights` (gpt-oss's MXFP4).
    pub expert_weights: Option<u32>,
}

impl Blocks {
    /// A small Llama: 4 layers, hidden 256, 4 query heads of 64 over 2 key/value heads.
    pub fn llama_like(arch: &'static str) -> Blocks {
        Blocks {
            arch,
            layers: 4,
            hidden: 256,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            ffn: 384,
            pre_norms: true,
            post_norms: false,
            qk_norm: QkNorm::None,
            qkv_bias: false,
            fused_qkv: false,
            biases: false,
            sinks: false,
            ffn_norm: "ffn_norm",
            fused_gate_up: false,
            rope_dims: None,
            rope_factors: false,
            experts: None,
            shared_expert: None,
            leading_dense: 0,
            moe_every: 1,
            probs_bias: false,
            nextn: 0,
            short_conv: None,
            output_norm: "output_norm",
            tied_output: false,
            metadata: Vec::new(),
            weights: F32,
            expert_weights: None,
        }
    }
}

/// Writes a file of `b`'s architecture with random weights and the tokenizer of
/// `tokenizer_source`, leaving out the metadata key `leave_out` when given.
pub fn blocks_file(tokenizer_source: &Gguf, b: &Blocks, seed: u64, name: &str, leave_out: Option<&str>) -> PathBuf {
    let vocab = vocab_size(tokenizer_source);
    let mut rng = Rng::new(seed);
    let mut random = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.uniform() * scale).collect() };
    let k = |key: &str| format!("{}.{key}", b.arch);
    let (h, hd) = (b.hidden, b.head_dim);
    let mut f = GgufFile::new()
        .meta("general.architecture", s(b.arch))
        .meta("general.name", s(name))
        .meta(&k("block_count"), Meta::U32((b.layers + b.nextn) as u32))
        .meta(&k("context_length"), Meta::U32(4096))
        .meta(&k("embedding_length"), Meta::U32(h as u32))
        .meta(&k("feed_forward_length"), Meta::U32(b.ffn as u32))
        .meta(&k("attention.head_count"), Meta::U32(b.heads as u32))
        .meta(&k("attention.head_count_kv"), Meta::U32(b.kv_heads as u32))
        .meta(&k("attention.key_length"), Meta::U32(hd as u32))
        .meta(&k("attention.value_length"), Meta::U32(hd as u32))
        .meta(&k("rope.dimension_count"), Meta::U32(b.rope_dims.unwrap_or(hd) as u32))
        .meta(&k("rope.freq_base"), Meta::F32(10_000.0))
        .meta(&k("attention.layer_norm_rms_epsilon"), Meta::F32(1e-6));
    if let Some((count, used, ffn)) = b.experts {
        f = f
            .meta(&k("expert_count"), Meta::U32(count as u32))
            .meta(&k("expert_used_count"), Meta::U32(used as u32))
            .meta(&k("expert_feed_forward_length"), Meta::U32(ffn as u32));
    }
    if let Some((ffn, true)) = b.shared_expert {
        f = f.meta(&k("expert_shared_feed_forward_length"), Meta::U32(ffn as u32));
    }
    if b.leading_dense > 0 {
        f = f.meta(&k("leading_dense_block_count"), Meta::U32(b.leading_dense as u32));
    }
    if b.nextn > 0 {
        f = f.meta(&k("nextn_predict_layers"), Meta::U32(b.nextn as u32));
    }
    if let Some((kernel, attending)) = b.short_conv {
        let counts = (0..b.layers).map(|i| if attending.contains(&i) { b.kv_heads as i32 } else { 0 }).collect();
        f = f.meta(&k("shortconv.l_cache"), Meta::U32(kernel as u32)).meta(&k("attention.head_count_kv"), Meta::I32s(counts));
    }
    for (key, meta) in &b.metadata {
        f = f.meta(&k(key), meta.clone());
    }
    for (key, meta) in tokenizer_metadata(tokenizer_source) {
        f = f.meta(&key, meta);
    }
    let norm = |rng: &mut dyn FnMut(usize, f32) -> Vec<f32>, n: usize| -> Vec<u8> { f32_bytes(&rng(n, 0.2).iter().map(|v| 1.0 + v).collect::<Vec<_>>()) };
    let wtype = b.weights;
    let etype = b.expert_weights.unwrap_or(wtype);
    let encode = |values: &[f32]| encoded(wtype, values);
    let linear_as = |ggml_type: u32, rng: &mut dyn FnMut(usize, f32) -> Vec<f32>, inputs: usize, outputs: usize| encoded(ggml_type, &rng(inputs * outputs, 2.0 / (inputs as f32).sqrt()));
    let linear = |rng: &mut dyn FnMut(usize, f32) -> Vec<f32>, inputs: usize, outputs: usize| linear_as(wtype, rng, inputs, outputs);
    let u = |n: usize| n as u64;
    f = f.tensor("token_embd.weight", &[u(h), u(vocab)], wtype, encode(&random(h * vocab, 1.0)));
    f = f.tensor(&format!("{}.weight", b.output_norm), &[u(h)], F32, norm(&mut random, h));
    // Output weights as large as the embedding's, so that the top logits are well separated
    // (no near-ties that float rounding alone could reorder).
    if !b.tied_output {
        f = f.tensor("output.weight", &[u(h), u(vocab)], wtype, encode(&random(h * vocab, 1.0)));
    }
    if b.rope_factors {
        // Divisors of each pair's angle: near 1 for the fast pairs, growing for the slow ones,
        // as LongRoPE's are (the long ones more).
        let pairs = b.rope_dims.unwrap_or(hd) / 2;
        let grow = |top: f32| f32_bytes(&(0..pairs).map(|i| 1.0 + top * (i as f32 / pairs as f32).powi(2)).collect::<Vec<_>>());
        f = f.tensor("rope_factors_long.weight", &[u(pairs)], F32, grow(30.0)).tensor("rope_factors_short.weight", &[u(pairs)], F32, grow(1.5));
    }
    for i in 0..b.layers + b.nextn {
        let p = |n: &str| format!("blk.{i}.{n}");
        let (q, kv) = (b.heads * hd, b.kv_heads * hd);
        if i >= b.layers {
            // A multi-token-prediction block's own tensors, beside a block's usual ones.
            f = f
                .tensor(&p("nextn.eh_proj.weight"), &[u(2 * h), u(h)], wtype, linear(&mut random, 2 * h, h))
                .tensor(&p("nextn.enorm.weight"), &[u(h)], F32, norm(&mut random, h))
                .tensor(&p("nextn.hnorm.weight"), &[u(h)], F32, norm(&mut random, h))
                .tensor(&p("nextn.shared_head_norm.weight"), &[u(h)], F32, norm(&mut random, h));
        }
        let convolves = b.short_conv.is_some_and(|(_, attending)| !attending.contains(&i));
        if convolves {
            // LFM2's convolution: `b`, `c` and `x` in one projection, each channel's taps.
            let kernel = b.short_conv.map_or(0, |(kernel, _)| kernel);
            f = f
                .tensor(&p("shortconv.conv.weight"), &[u(kernel), u(h)], F32, f32_bytes(&random(kernel * h, 1.0)))
                .tensor(&p("shortconv.in_proj.weight"), &[u(h), u(3 * h)], wtype, linear(&mut random, h, 3 * h))
                .tensor(&p("shortconv.out_proj.weight"), &[u(h), u(h)], wtype, linear(&mut random, h, h));
        } else {
            f = if b.fused_qkv {
                f.tensor(&p("attn_qkv.weight"), &[u(h), u(q + 2 * kv)], wtype, linear(&mut random, h, q + 2 * kv))
            } else {
                f.tensor(&p("attn_q.weight"), &[u(h), u(q)], wtype, linear(&mut random, h, q))
                    .tensor(&p("attn_k.weight"), &[u(h), u(kv)], wtype, linear(&mut random, h, kv))
                    .tensor(&p("attn_v.weight"), &[u(h), u(kv)], wtype, linear(&mut random, h, kv))
            };
            f = f.tensor(&p("attn_output.weight"), &[u(q), u(h)], wtype, linear(&mut random, q, h));
            if b.biases {
                f = f.tensor(&p("attn_output.bias"), &[u(h)], F32, f32_bytes(&random(h, 0.5)));
            }
            if b.sinks {
                f = f.tensor(&p("attn_sinks.weight"), &[u(b.heads)], F32, f32_bytes(&random(b.heads, 2.0)));
            }
            if b.qkv_bias && b.fused_qkv {
                f = f.tensor(&p("attn_qkv.bias"), &[u(q + 2 * kv)], F32, f32_bytes(&random(q + 2 * kv, 0.5)));
            } else if b.qkv_bias {
                f = f
                    .tensor(&p("attn_q.bias"), &[u(q)], F32, f32_bytes(&random(q, 0.5)))
                    .tensor(&p("attn_k.bias"), &[u(kv)], F32, f32_bytes(&random(kv, 0.5)))
                    .tensor(&p("attn_v.bias"), &[u(kv)], F32, f32_bytes(&random(kv, 0.5)));
            }
            let (q_norm, k_norm) = match b.qk_norm {
                QkNorm::None => (0, 0),
                QkNorm::PerHead => (hd, hd),
                QkNorm::Whole => (q, kv),
            };
            if q_norm > 0 {
                f = f.tensor(&p("attn_q_norm.weight"), &[u(q_norm)], F32, norm(&mut random, q_norm)).tensor(&p("attn_k_norm.weight"), &[u(k_norm)], F32, norm(&mut random, k_norm));
            }
        }
        if b.pre_norms {
            f = f.tensor(&p("attn_norm.weight"), &[u(h)], F32, norm(&mut random, h)).tensor(&p(&format!("{}.weight", b.ffn_norm)), &[u(h)], F32, norm(&mut random, h));
        }
        if b.post_norms {
            f = f.tensor(&p("post_attention_norm.weight"), &[u(h)], F32, norm(&mut random, h)).tensor(&p("post_ffw_norm.weight"), &[u(h)], F32, norm(&mut random, h));
        }
        let experts = b.experts.filter(|_| i >= b.leading_dense && (i + 1) % b.moe_every == 0);
        match experts {
            None if b.fused_gate_up => {
                f = f
                    .tensor(&p("ffn_up.weight"), &[u(h), u(2 * b.ffn)], wtype, linear(&mut random, h, 2 * b.ffn))
                    .tensor(&p("ffn_down.weight"), &[u(b.ffn), u(h)], wtype, linear(&mut random, b.ffn, h));
            }
            None => {
                f = f
                    .tensor(&p("ffn_gate.weight"), &[u(h), u(b.ffn)], wtype, linear(&mut random, h, b.ffn))
                    .tensor(&p("ffn_up.weight"), &[u(h), u(b.ffn)], wtype, linear(&mut random, h, b.ffn))
                    .tensor(&p("ffn_down.weight"), &[u(b.ffn), u(h)], wtype, linear(&mut random, b.ffn, h));
            }
            Some((n, _, ff)) => {
                f = f
                    .tensor(&p("ffn_gate_inp.weight"), &[u(h), u(n)], F32, f32_bytes(&random(h * n, 0.5)))
                    .tensor(&p("ffn_gate_exps.weight"), &[u(h), u(ff), u(n)], etype, linear_as(etype, &mut random, h, ff * n))
                    .tensor(&p("ffn_up_exps.weight"), &[u(h), u(ff), u(n)], etype, linear_as(etype, &mut random, h, ff * n))
                    .tensor(&p("ffn_down_exps.weight"), &[u(ff), u(h), u(n)], etype, linear_as(etype, &mut random, ff, h * n));
                if b.probs_bias {
                    f = f.tensor(&p("exp_probs_b.bias"), &[u(n)], F32, f32_bytes(&random(n, 0.1)));
                }
                if b.biases {
                    f = f
                        .tensor(&p("ffn_gate_inp.bias"), &[u(n)], F32, f32_bytes(&random(n, 0.5)))
                        .tensor(&p("ffn_gate_exps.bias"), &[u(ff), u(n)], F32, f32_bytes(&random(ff * n, 0.5)))
                        .tensor(&p("ffn_up_exps.bias"), &[u(ff), u(n)], F32, f32_bytes(&random(ff * n, 0.5)))
                        .tensor(&p("ffn_down_exps.bias"), &[u(h), u(n)], F32, f32_bytes(&random(h * n, 0.5)));
                }
            }
        }
        if let Some((sf, gated)) = b.shared_expert.filter(|_| experts.is_some()) {
            f = f
                .tensor(&p("ffn_gate_shexp.weight"), &[u(h), u(sf)], wtype, linear(&mut random, h, sf))
                .tensor(&p("ffn_up_shexp.weight"), &[u(h), u(sf)], wtype, linear(&mut random, h, sf))
                .tensor(&p("ffn_down_shexp.weight"), &[u(sf), u(h)], wtype, linear(&mut random, sf, h));
            if gated {
                f = f.tensor(&p("ffn_gate_inp_shexp.weight"), &[u(h)], F32, f32_bytes(&random(h, 2.0 / (h as f32).sqrt())));
            }
        }
    }
    if let Some(key) = leave_out {
        f = f.without(key);
    }
    let path = std::env::temp_dir().join(format!("candlewick-test-{}-{name}.gguf", std::process::id()));
    std::fs::write(&path, f.bytes()).unwrap();
    path
}
