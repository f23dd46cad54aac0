//! GGUF files with the exact tensor names, shapes and type mixes of the routes' real files
//! (REFERENCE.md §10), random weights (tests/common/quants.rs) and a real tokenizer, written
//! as a stream so that a 17 GiB file never sits in memory. The full-size ones feed
//! `benches/scale.rs`; small ones of the same layout feed `tests/scale.rs`.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use candlewick::gguf::{Gguf, Value};

use super::gguf_writer::{data_len, header, s, Meta, ALIGNMENT};
use super::quants::{byte_len, block_size, fill_blocks};
use super::synthetic::{tokenizer_metadata, Rng};

/// ggml type ids used by the mixes below.
pub const F32: u32 = 0;
pub const Q8_0: u32 = 8;
pub const Q4_K: u32 = 12;
pub const Q6_K: u32 = 14;
pub const IQ2_XXS: u32 = 16;
pub const IQ1_S: u32 = 19;
pub const IQ4_XS: u32 = 23;

/// How a tensor's values are drawn.
#[derive(Clone, Copy, Debug)]
pub enum Fill {
    /// A norm's weights (F32): 1 plus uniform noise of ±0.1.
    Norm,
    /// Random blocks whose values spread with this standard deviation.
    Random(f32),
}

/// One tensor to write.
#[derive(Clone, Debug)]
pub struct Planned {
    pub name: String,
    /// GGUF `ne`: innermost (row length) first.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub fill: Fill,
}

impl Planned {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        byte_len(self.ggml_type, self.elements() as usize) as u64
    }
}

/// A whole file: its metadata and tensors, in file order.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub metadata: Vec<(String, Meta)>,
    pub tensors: Vec<Planned>,
}

/// The key whose value tells a complete file of this plan and seed from anything else.
const MARKER: &str = "candlewick.scale.plan";

impl Plan {
    pub fn meta(&mut self, key: &str, v: Meta) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), v));
    }

    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, fill: Fill) {
        self.tensors.push(Planned { name: name.to_string(), dims: dims.to_vec(), ggml_type, fill });
    }

    /// Bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        data_len(self.tensors.iter().map(Planned::bytes))
    }

    /// Parameters (values of all tensors).
    pub fn parameters(&self) -> u64 {
        self.tensors.iter().map(Planned::elements).sum()
    }

    fn with_marker(&self, seed: u64) -> Vec<(String, Meta)> {
        let mut metadata = self.metadata.clone();
        let marker = format!("seed {seed}, {} tensors, {} data bytes, format 1", self.tensors.len(), self.data_bytes());
        metadata.push((MARKER.to_string(), Meta::Str(marker)));
        metadata
    }

    fn header(&self, seed: u64) -> Vec<u8> {
        let infos: Vec<(&str, &[u64], u32, u64)> = self.tensors.iter().map(|t| (t.name.as_str(), t.dims.as_slice(), t.ggml_type, t.bytes())).collect();
        header(3, &self.with_marker(seed), &infos)
    }

    /// The whole file's length.
    pub fn file_bytes(&self, seed: u64) -> u64 {
        self.header(seed).len() as u64 + self.data_bytes()
    }

    /// Whether `path` holds this plan written with this seed: its length and its marker key.
    pub fn is_written(&self, path: &Path, seed: u64) -> bool {
        let Ok(meta) = std::fs::metadata(path) else { return false };
        if meta.len() != self.file_bytes(seed) {
            return false;
        }
        let Ok(file) = std::fs::File::open(path) else { return false };
        let Ok(gguf) = Gguf::read(&mut std::io::BufReader::new(file)) else { return false };
        let expected = self.with_marker(seed).pop().map(|(_, m)| m);
        matches!((gguf.get(MARKER), expected), (Some(Value::String(a)), Some(Meta::Str(b))) if *a == b)
    }

    /// Writes the file unless `path` already holds it; returns how long writing took (`None`:
    /// reused). Writes `path.partial` first and renames it when complete, so an interrupted
    /// run never leaves a file that looks whole.
    pub fn ensure(&self, path: &Path, seed: u64) -> std::io::Result<Option<Duration>> {
        if self.is_written(path, seed) {
            return Ok(None);
        }
        let start = Instant::now();
        self.write(path, seed)?;
        Ok(Some(start.elapsed()))
    }

    /// Writes the file, tensor data streamed in pieces of at most 16 MiB.
    pub fn write(&self, path: &Path, seed: u64) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = path.with_extension("gguf.partial");
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&partial)?);
        out.write_all(&self.header(seed))?;
        let mut rng = Rng::new(seed);
        let mut buffer = Vec::new();
        for t in &self.tensors {
            let (per_block, block_bytes) = block_size(t.ggml_type).unwrap_or_else(|| panic!("{}: no writer for type {}", t.name, t.ggml_type));
            // Whole blocks per piece, about 16 MiB.
            let blocks_per_piece = ((16usize << 20) / block_bytes).max(1);
            let mut left = t.elements() as usize / per_block;
            while left > 0 {
                let blocks = left.min(blocks_per_piece);
                buffer.resize(blocks * block_bytes, 0);
                match t.fill {
                    Fill::Random(sigma) => fill_blocks(t.ggml_type, &mut buffer, sigma, &mut rng),
                    Fill::Norm => {
                        assert_eq!(t.ggml_type, F32, "{}: norms are F32", t.name);
                        for v in buffer.chunks_exact_mut(4) {
                            v.copy_from_slice(&(1.0 + 0.1 * rng.uniform()).to_le_bytes());
                        }
                    }
                }
                out.write_all(&buffer)?;
                left -= blocks;
            }
            let pad = t.bytes().div_ceil(ALIGNMENT) * ALIGNMENT - t.bytes();
            out.write_all(&vec![0u8; pad as usize])?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&partial, path)
    }
}

/// Standard deviation of a linear layer's weights with `inputs` inputs: `gain / √inputs`
/// (about 0.022 for Qwen3-Coder's 2048 with gain 1, as trained weights spread).
fn linear(gain: f32, inputs: u64) -> Fill {
    Fill::Random(gain / (inputs as f32).sqrt())
}

/// The tokenizer of `source` (Qwen2.5-Coder's), its vocabulary padded with unused tokens
/// (type 5) to `vocab`, with the `qwen2` pre-tokenizer.
pub fn tokenizer(source: &Gguf, vocab: usize) -> Vec<(String, Meta)> {
    let mut out = tokenizer_metadata(source);
    for (key, meta) in out.iter_mut() {
        match (key.as_str(), meta) {
            ("tokenizer.ggml.tokens", Meta::Strs(tokens)) => {
                assert!(tokens.len() <= vocab, "the tokenizer has {} tokens, more than {vocab}", tokens.len());
                for i in tokens.len()..vocab {
                    tokens.push(format!("<|candlewick_unused_{i}|>"));
                }
            }
            ("tokenizer.ggml.token_type", Meta::I32s(types)) => types.resize(vocab, 5),
            ("tokenizer.ggml.scores", Meta::F32s(scores)) => scores.resize(vocab, 0.0),
            ("tokenizer.ggml.pre", meta) => *meta = s("qwen2"),
            _ => {}
        }
    }
    out
}

/// Full size, or a small file of the same layout for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Full,
    Small,
}

/// Sizes of a `qwen3moe` file.
pub struct Qwen3Moe {
    pub layers: usize,
    pub hidden: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    /// `feed_forward_length`: in the metadata, used by no tensor.
    pub ffn: u64,
    pub experts: u64,
    pub used: u64,
    pub expert_ffn: u64,
    pub vocab: u64,
    pub context: u32,
    /// Spread of the embeddings, and gain of the linear layers (see [`linear`]).
    pub embedding_sigma: f32,
    pub gain: f32,
}

impl Qwen3Moe {
    /// Qwen3-Coder-30B-A3B-Instruct (its config.json), or a small model of the same layout:
    /// widths multiples of 256 for the 256-value K-quant blocks, a larger spread so that the
    /// top logits are well apart (greedy comparisons meet fewer near-ties).
    pub fn coder(size: Size) -> Qwen3Moe {
        match size {
            Size::Full => Qwen3Moe {
                layers: 48,
                hidden: 2048,
                heads: 32,
                kv_heads: 4,
                head_dim: 128,
                ffn: 5472,
                experts: 128,
                used: 8,
                expert_ffn: 768,
                vocab: 151936,
                context: 262144,
                embedding_sigma: 0.02,
                gain: 1.0,
            },
            Size::Small => Qwen3Moe {
                layers: 4,
                hidden: 256,
                heads: 4,
                kv_heads: 2,
                head_dim: 128,
                ffn: 512,
                experts: 8,
                used: 2,
                expert_ffn: 256,
                vocab: 151936,
                context: 4096,
                embedding_sigma: 0.6,
                gain: 1.5,
            },
        }
    }
}

/// llama.cpp's `use_more_bits`: the layers Q4_K_M gives Q6_K for `attn_v` and `ffn_down`.
pub fn more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// A `qwen3moe` file in llama.cpp's mainline Q4_K_M mix: F32 norms and router; Q6_K `output`,
/// and `attn_v`/`ffn_down_exps` in the [`more_bits`] layers; Q4_K everything else.
pub fn qwen3moe(source: &Gguf, q: &Qwen3Moe, name: &str) -> Plan {
    let mut p = Plan::default();
    let k = |key: &str| format!("qwen3moe.{key}");
    p.meta("general.architecture", s("qwen3moe"));
    p.meta("general.type", s("model"));
    p.meta("general.name", s(name));
    p.meta("general.size_label", s("128x1.8B"));
    p.meta(&k("block_count"), Meta::U32(q.layers as u32));
    p.meta(&k("context_length"), Meta::U32(q.context));
    p.meta(&k("embedding_length"), Meta::U32(q.hidden as u32));
    p.meta(&k("feed_forward_length"), Meta::U32(q.ffn as u32));
    p.meta(&k("attention.head_count"), Meta::U32(q.heads as u32));
    p.meta(&k("attention.head_count_kv"), Meta::U32(q.kv_heads as u32));
    p.meta(&k("rope.freq_base"), Meta::F32(10_000_000.0));
    p.meta(&k("attention.layer_norm_rms_epsilon"), Meta::F32(1e-6));
    p.meta(&k("expert_used_count"), Meta::U32(q.used as u32));
    p.meta(&k("attention.key_length"), Meta::U32(q.head_dim as u32));
    p.meta(&k("attention.value_length"), Meta::U32(q.head_dim as u32));
    p.meta(&k("expert_count"), Meta::U32(q.experts as u32));
    p.meta(&k("expert_feed_forward_length"), Meta::U32(q.expert_ffn as u32));
    p.meta("general.file_type", Meta::U32(15)); // LLAMA_FTYPE_MOSTLY_Q4_K_M
    p.meta("general.quantization_version", Meta::U32(2));
    for (key, meta) in tokenizer(source, q.vocab as usize) {
        p.meta(&key, meta);
    }
    let (h, n, ff) = (q.hidden, q.experts, q.expert_ffn);
    let (qw, kvw) = (q.heads * q.head_dim, q.kv_heads * q.head_dim);
    p.tensor("token_embd.weight", &[h, q.vocab], Q4_K, Fill::Random(q.embedding_sigma)); // [2048, 151936]
    for i in 0..q.layers {
        let b = |t: &str| format!("blk.{i}.{t}.weight");
        let more = if more_bits(i, q.layers) { Q6_K } else { Q4_K };
        p.tensor(&b("attn_norm"), &[h], F32, Fill::Norm);
        p.tensor(&b("attn_q"), &[h, qw], Q4_K, linear(q.gain, h)); // [2048, 4096]
        p.tensor(&b("attn_k"), &[h, kvw], Q4_K, linear(q.gain, h)); // [2048, 512]
        p.tensor(&b("attn_v"), &[h, kvw], more, linear(q.gain, h)); // [2048, 512]
        p.tensor(&b("attn_output"), &[qw, h], Q4_K, linear(q.gain, qw)); // [4096, 2048]
        p.tensor(&b("attn_q_norm"), &[q.head_dim], F32, Fill::Norm); // [128]
        p.tensor(&b("attn_k_norm"), &[q.head_dim], F32, Fill::Norm);
        p.tensor(&b("ffn_norm"), &[h], F32, Fill::Norm);
        p.tensor(&b("ffn_gate_inp"), &[h, n], F32, linear(q.gain, h)); // [2048, 128]
        p.tensor(&b("ffn_gate_exps"), &[h, ff, n], Q4_K, linear(q.gain, h)); // [2048, 768, 128]
        p.tensor(&b("ffn_up_exps"), &[h, ff, n], Q4_K, linear(q.gain, h));
        p.tensor(&b("ffn_down_exps"), &[ff, h, n], more, linear(q.gain, ff)); // [768, 2048, 128]
    }
    p.tensor("output_norm.weight", &[h], F32, Fill::Norm);
    p.tensor("output.weight", &[h, q.vocab], Q6_K, linear(q.gain, h)); // [2048, 151936]
    p
}

/// Sizes of a Kimi-K2-shaped `deepseek2` file.
pub struct Kimi {
    pub layers: usize,
    pub hidden: u64,
    pub heads: u64,
    pub q_rank: u64,
    pub kv_rank: u64,
    pub nope: u64,
    pub rope: u64,
    pub value: u64,
    /// The dense block's FFN width.
    pub ffn: u64,
    pub experts: u64,
    pub used: u64,
    pub expert_ffn: u64,
    pub vocab: u64,
    pub embedding_sigma: f32,
    pub gain: f32,
}

impl Kimi {
    /// Kimi K2 Instruct at full width with 3 blocks (one dense, two MoE), or a small model of
    /// the same layout.
    pub fn k2(size: Size) -> Kimi {
        match size {
            Size::Full => Kimi {
                layers: 3,
                hidden: 7168,
                heads: 64,
                q_rank: 1536,
                kv_rank: 512,
                nope: 128,
                rope: 64,
                value: 128,
                ffn: 18432,
                experts: 384,
                used: 8,
                expert_ffn: 2048,
                vocab: 163840,
                embedding_sigma: 0.02,
                gain: 1.0,
            },
            Size::Small => Kimi {
                layers: 3,
                hidden: 256,
                heads: 4,
                q_rank: 256,
                kv_rank: 256,
                nope: 128,
                rope: 64,
                value: 128,
                ffn: 256,
                experts: 8,
                used: 2,
                expert_ffn: 256,
                vocab: 163840,
                embedding_sigma: 0.6,
                gain: 1.5,
            },
        }
    }
}

/// A Kimi-K2-shaped `deepseek2` file in an IQ1_S-style mix: expert gate/up IQ1_S, expert down
/// IQ2_XXS, shared expert IQ4_XS, `attn_k_b`/`attn_v_b` Q8_0 (their 128-wide rows cannot hold
/// 256-value blocks), other attention and the dense FFN Q4_K, `output` Q6_K, `token_embd`
/// Q4_K, norms, router and expert bias F32.
pub fn kimi(source: &Gguf, d: &Kimi, name: &str) -> Plan {
    let mut p = Plan::default();
    let k = |key: &str| format!("deepseek2.{key}");
    p.meta("general.architecture", s("deepseek2"));
    p.meta("general.type", s("model"));
    p.meta("general.name", s(name));
    p.meta(&k("block_count"), Meta::U32(d.layers as u32));
    p.meta(&k("context_length"), Meta::U32(131072));
    p.meta(&k("embedding_length"), Meta::U32(d.hidden as u32));
    p.meta(&k("feed_forward_length"), Meta::U32(d.ffn as u32));
    p.meta(&k("attention.head_count"), Meta::U32(d.heads as u32));
    // MLA as llama.cpp converts it: one latent KV "head" of kv_rank + rope values.
    p.meta(&k("attention.head_count_kv"), Meta::U32(1));
    p.meta(&k("attention.key_length"), Meta::U32((d.kv_rank + d.rope) as u32));
    p.meta(&k("attention.value_length"), Meta::U32(d.kv_rank as u32));
    p.meta(&k("attention.key_length_mla"), Meta::U32((d.nope + d.rope) as u32));
    p.meta(&k("attention.value_length_mla"), Meta::U32(d.value as u32));
    p.meta(&k("attention.layer_norm_rms_epsilon"), Meta::F32(1e-6));
    p.meta(&k("attention.q_lora_rank"), Meta::U32(d.q_rank as u32));
    p.meta(&k("attention.kv_lora_rank"), Meta::U32(d.kv_rank as u32));
    p.meta(&k("rope.freq_base"), Meta::F32(50_000.0));
    p.meta(&k("rope.dimension_count"), Meta::U32(d.rope as u32));
    p.meta(&k("rope.scaling.type"), s("yarn"));
    p.meta(&k("rope.scaling.factor"), Meta::F32(32.0));
    p.meta(&k("rope.scaling.original_context_length"), Meta::U32(4096));
    p.meta(&k("rope.scaling.yarn_log_multiplier"), Meta::F32(0.1));
    p.meta(&k("leading_dense_block_count"), Meta::U32(1));
    p.meta(&k("vocab_size"), Meta::U32(d.vocab as u32));
    p.meta(&k("expert_count"), Meta::U32(d.experts as u32));
    p.meta(&k("expert_used_count"), Meta::U32(d.used as u32));
    p.meta(&k("expert_feed_forward_length"), Meta::U32(d.expert_ffn as u32));
    p.meta(&k("expert_shared_count"), Meta::U32(1));
    p.meta(&k("expert_group_count"), Meta::U32(1));
    p.meta(&k("expert_group_used_count"), Meta::U32(1));
    p.meta(&k("expert_weights_scale"), Meta::F32(2.827));
    p.meta(&k("expert_weights_norm"), Meta::Bool(true));
    p.meta(&k("expert_gating_func"), Meta::U32(2)); // sigmoid
    p.meta("general.file_type", Meta::U32(24)); // LLAMA_FTYPE_MOSTLY_IQ1_S
    p.meta("general.quantization_version", Meta::U32(2));
    for (key, meta) in tokenizer(source, d.vocab as usize) {
        p.meta(&key, meta);
    }
    let (h, n, ff, heads) = (d.hidden, d.experts, d.expert_ffn, d.heads);
    let g = d.gain;
    p.tensor("token_embd.weight", &[h, d.vocab], Q4_K, Fill::Random(d.embedding_sigma)); // [7168, 163840]
    for i in 0..d.layers {
        let b = |t: &str| format!("blk.{i}.{t}.weight");
        p.tensor(&b("attn_norm"), &[h], F32, Fill::Norm);
        p.tensor(&b("attn_q_a"), &[h, d.q_rank], Q4_K, linear(g, h)); // [7168, 1536]
        p.tensor(&b("attn_q_a_norm"), &[d.q_rank], F32, Fill::Norm);
        p.tensor(&b("attn_q_b"), &[d.q_rank, heads * (d.nope + d.rope)], Q4_K, linear(g, d.q_rank)); // [1536, 12288]
        p.tensor(&b("attn_kv_a_mqa"), &[h, d.kv_rank + d.rope], Q4_K, linear(g, h)); // [7168, 576]
        p.tensor(&b("attn_kv_a_norm"), &[d.kv_rank], F32, Fill::Norm); // [512]
        p.tensor(&b("attn_k_b"), &[d.nope, d.kv_rank, heads], Q8_0, linear(g, d.nope)); // [128, 512, 64]
        p.tensor(&b("attn_v_b"), &[d.kv_rank, d.value, heads], Q8_0, linear(g, d.kv_rank)); // [512, 128, 64]
        p.tensor(&b("attn_output"), &[heads * d.value, h], Q4_K, linear(g, heads * d.value)); // [8192, 7168]
        p.tensor(&b("ffn_norm"), &[h], F32, Fill::Norm);
        if i == 0 {
            p.tensor(&b("ffn_gate"), &[h, d.ffn], Q4_K, linear(g, h)); // [7168, 18432]
            p.tensor(&b("ffn_up"), &[h, d.ffn], Q4_K, linear(g, h));
            p.tensor(&b("ffn_down"), &[d.ffn, h], Q4_K, linear(g, d.ffn)); // [18432, 7168]
            continue;
        }
        p.tensor(&b("ffn_gate_inp"), &[h, n], F32, linear(g, h)); // [7168, 384]
        p.tensor(&format!("blk.{i}.exp_probs_b.bias"), &[n], F32, Fill::Random(0.01)); // [384]
        p.tensor(&b("ffn_gate_exps"), &[h, ff, n], IQ1_S, linear(g, h)); // [7168, 2048, 384]
        p.tensor(&b("ffn_up_exps"), &[h, ff, n], IQ1_S, linear(g, h));
        p.tensor(&b("ffn_down_exps"), &[ff, h, n], IQ2_XXS, linear(g, ff)); // [2048, 7168, 384]
        p.tensor(&b("ffn_gate_shexp"), &[h, ff], IQ4_XS, linear(g, h)); // [7168, 2048]
        p.tensor(&b("ffn_up_shexp"), &[h, ff], IQ4_XS, linear(g, h));
        p.tensor(&b("ffn_down_shexp"), &[ff, h], IQ4_XS, linear(g, ff)); // [2048, 7168]
    }
    p.tensor("output_norm.weight", &[h], F32, Fill::Norm);
    p.tensor("output.weight", &[h, d.vocab], Q6_K, linear(g, h)); // [7168, 163840]
    p
}

/// The Qwen2.5-Coder file's header, whose tokenizer every scale file carries.
pub fn tokenizer_source(path: &Path) -> Gguf {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Gguf::read(&mut std::io::BufReader::new(file)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
