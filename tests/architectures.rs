//! The architectures built from Llama's parts (`gemma2`, `granite`, `granitemoe`, `olmo2`,
//! `phi3`, `smollm3`, `qwen2moe`, `glm4`, `glm4moe`, `gpt-oss`, `mistral3`, `lfm2`, `lfm2moe`,
//! `llama4`): small synthetic files with random f32 weights, the architecture's own metadata
//! keys and tensor names as llama.cpp reads them, and a real tokenizer, checked against
//! llama.cpp (node-llama-cpp) on the raw prompts: at least 7 of 8 greedy continuations of 16
//! tokens identical, and every first step's five most likely tokens in the same order.
//!
//! f32 weights leave the two engines differing by float rounding alone (see `tests/deepseek2.rs`),
//! so what differs in what a layer computes shows as different tokens.

mod common;

use candlewick::gguf::Gguf;
use candlewick::arch::State;
use candlewick::{Error, Model};
use candlewick::arch::attention::RING_PART;
use common::agreement::{compare, compare_prompts, compare_prompts_in, Agreement};
use common::gguf_writer::Meta;
use common::model;
use common::synthetic::{blocks_file, Blocks, QkNorm, MXFP4, Q4_K, Q8_0};
use common::{QWEN25_CODER, SMOLLM2};

/// The file whose tokenizer the synthetic files carry: SmolLM2's (the smaller vocabulary), but
/// Qwen2.5's for `phi3`, which llama.cpp does not load with SmolLM2's (its vocabulary loader
/// fails with `_Map_base::at`).
fn source(arch: &str) -> Gguf {
    let real = if arch == "phi3" { QWEN25_CODER } else { SMOLLM2 };
    Gguf::read(&mut std::io::BufReader::new(std::fs::File::open(model(real)).unwrap())).unwrap()
}

fn check_against_llama_cpp(blocks: &Blocks, name: &str) -> Agreement {
    let path = blocks_file(&source(blocks.arch), blocks, 0xA2C4_1515, name, None);
    let result = std::panic::catch_unwind(|| compare(&path, name));
    std::fs::remove_file(&path).ok();
    result.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The acceptance standard of issue 15.
fn assert_matches_llama_cpp(blocks: &Blocks, name: &str) {
    let a = check_against_llama_cpp(blocks, name);
    assert!(a.equal >= 7, "{name}: only {} of 8 prompts match llama.cpp's first 16 greedy tokens", a.equal);
    assert_eq!(a.same_top5, 8, "{name}: the first step's top 5 differ from llama.cpp's");
    assert_same_distribution(&a, name);
}

/// The first step's log-probabilities of llama.cpp's five best tokens within 0.05 of llama.cpp's
/// (float rounding leaves up to 0.014 on these files): what checks the transformations of the
/// logits that keep their order (Gemma 2's final soft-cap, Granite's logit scale).
fn assert_same_distribution(a: &Agreement, name: &str) {
    assert!(a.worst_logprob < 0.05, "{name}: first-step log-probabilities differ from llama.cpp's by {}", a.worst_logprob);
}

/// Gemma 2: soft-capped attention scores and logits (caps small enough to bite on these
/// weights), a sliding window of 8 positions on every other layer (the prompts and their
/// continuations are longer), post-norms, scaled embeddings, GELU, the output tied to the
/// embedding.
fn gemma2() -> Blocks {
    Blocks {
        post_norms: true,
        tied_output: true,
        metadata: vec![
            ("attn_logit_softcapping", Meta::F32(2.0)),
            ("final_logit_softcapping", Meta::F32(30.0)),
            ("attention.sliding_window", Meta::U32(8)),
        ],
        ..Blocks::llama_like("gemma2")
    }
}

/// Granite 3's multipliers (those of granite-3.x-2b).
fn granite() -> Blocks {
    Blocks {
        metadata: vec![
            ("embedding_scale", Meta::F32(12.0)),
            ("residual_scale", Meta::F32(0.22)),
            ("attention.scale", Meta::F32(0.015625)),
            ("logit_scale", Meta::F32(8.0)),
        ],
        ..Blocks::llama_like("granite")
    }
}

/// OLMo 2: no norms before attention and feed-forward, norms after both, Q/K norms over the
/// whole projection.
fn olmo2() -> Blocks {
    Blocks { pre_norms: false, post_norms: true, qk_norm: QkNorm::Whole, ..Blocks::llama_like("olmo2") }
}

/// SmolLM3: the fourth layer has no RoPE.
fn smollm3() -> Blocks {
    Blocks::llama_like("smollm3")
}

/// Phi-3 (as Phi-4-mini): fused QKV and gate/up projections, RoPE over 48 of 64 dimensions,
/// LongRoPE's factors (the short ones: llama.cpp's context of 1024 is within the original 4096)
/// and its attention factor.
fn phi3() -> Blocks {
    Blocks {
        fused_qkv: true,
        fused_gate_up: true,
        rope_dims: Some(48),
        rope_factors: true,
        metadata: vec![("rope.scaling.attn_factor", Meta::F32(1.190_239)), ("rope.scaling.original_context_length", Meta::U32(4096))],
        ..Blocks::llama_like("phi3")
    }
}

/// GLM-4-0414: fused QKV with its bias, fused gate/up, RoPE (interleaved) over 32 of 64
/// dimensions, norms before and after attention and feed-forward.
fn glm4() -> Blocks {
    Blocks { fused_qkv: true, qkv_bias: true, fused_gate_up: true, rope_dims: Some(32), post_norms: true, ..Blocks::llama_like("glm4") }
}

/// GLM-4.5 (as GLM-4.5-Air, with GLM-4.5's Q/K norms): a leading dense block, then 8 experts of
/// which 4 chosen by their sigmoid scores plus a selection bias (no gating key: llama.cpp's
/// default for `glm4moe`), their weights normalised and scaled by 2.5, and a shared expert; QKV
/// bias, per-head Q/K norms, RoPE (halves) over 32 of 64 dimensions, the feed-forward norm named
/// `post_attention_norm`; and a multi-token-prediction block at the end, which inference leaves
/// out.
fn glm4moe() -> Blocks {
    Blocks {
        qkv_bias: true,
        qk_norm: QkNorm::PerHead,
        rope_dims: Some(32),
        ffn_norm: "post_attention_norm",
        experts: Some((8, 4, 64)),
        shared_expert: Some((64, false)),
        leading_dense: 1,
        probs_bias: true,
        nextn: 1,
        metadata: vec![("expert_shared_count", Meta::U32(1)), ("expert_weights_norm", Meta::Bool(true)), ("expert_weights_scale", Meta::F32(2.5))],
        ..Blocks::llama_like("glm4moe")
    }
}

/// gpt-oss: attention sinks, biases on every projection (experts' and router's too), a sliding
/// window of 8 positions on every other layer, YaRN (factor 32 over 4096 positions, so its
/// rotation scale applies and the slow pairs are interpolated), 8 experts of which 4 chosen by
/// their raw logits and weighed by their softmax, gpt-oss's clamped SwiGLU, and its
/// feed-forward norm named `post_attention_norm`.
fn gpt_oss() -> Blocks {
    Blocks {
        qkv_bias: true,
        biases: true,
        sinks: true,
        ffn_norm: "post_attention_norm",
        experts: Some((8, 4, 64)),
        metadata: vec![
            ("attention.sliding_window", Meta::U32(8)),
            ("rope.scaling.type", Meta::Str("yarn".into())),
            ("rope.scaling.factor", Meta::F32(32.0)),
            ("rope.scaling.original_context_length", Meta::U32(4096)),
        ],
        ..Blocks::llama_like("gpt-oss")
    }
}

/// Llama 4 (as Maverick, with Scout's Q/K norms): four layers, the first three with RoPE and
/// chunked attention (chunks of 8192 positions), the fourth without RoPE and global;
/// weightless Q/K norms after RoPE; every other block with 8 experts, each token's one expert
/// chosen by its router logit and its input weighed by the logit's sigmoid, beside a shared
/// expert as wide.
fn llama4() -> Blocks {
    Blocks {
        experts: Some((8, 1, 64)),
        shared_expert: Some((64, false)),
        moe_every: 2,
        metadata: vec![("interleave_moe_layer_step", Meta::U32(2))],
        ..Blocks::llama_like("llama4")
    }
}

/// LFM2 (as LFM2-350M, smaller): six layers of which the third and the sixth attend (per-head
/// Q/K norms, RoPE) and the others run the gated short convolution over 3 positions; the output
/// tied to the embedding, the final norm named `token_embd_norm`.
fn lfm2() -> Blocks {
    Blocks { layers: 6, qk_norm: QkNorm::PerHead, short_conv: Some((3, &[2, 5])), output_norm: "token_embd_norm", tied_output: true, ..Blocks::llama_like("lfm2") }
}

/// LFM2-MoE (as LFM2-8B-A1B, smaller): LFM2's layers with a leading dense block, then 8
/// experts of which 2 chosen by their sigmoid scores plus a selection bias, their weights
/// normalised.
fn lfm2moe() -> Blocks {
    Blocks {
        arch: "lfm2moe",
        experts: Some((8, 2, 64)),
        leading_dense: 1,
        probs_bias: true,
        metadata: vec![("expert_gating_func", Meta::U32(2))],
        ..lfm2()
    }
}

/// Granite 3's mixture of experts: Granite's multipliers over 8 experts (2 per token, softmax
/// weights renormalised) as wide as the dense feed-forward (llama.cpp sizes them by it).
fn granitemoe() -> Blocks {
    Blocks { arch: "granitemoe", experts: Some((8, 2, 384)), ..granite() }
}

/// Mistral 3 (Ministral 3): Llama's layers with the attention temperature, over an original
/// context of 4 positions so that it grows within the prompts (×1.24 at position 40).
fn mistral3() -> Blocks {
    Blocks {
        metadata: vec![("attention.temperature_scale", Meta::F32(0.1)), ("rope.scaling.original_context_length", Meta::U32(4))],
        ..Blocks::llama_like("mistral3")
    }
}

/// Qwen2-MoE: QKV bias, 8 experts (2 per token, weights not renormalised) and a shared expert
/// behind a sigmoid gate.
fn qwen2moe() -> Blocks {
    Blocks { qkv_bias: true, experts: Some((8, 2, 64)), shared_expert: Some((128, true)), ..Blocks::llama_like("qwen2moe") }
}

#[test]
fn gemma2_matches_llama_cpp() {
    assert_matches_llama_cpp(&gemma2(), "gemma2");
}

#[test]
fn granite_matches_llama_cpp() {
    assert_matches_llama_cpp(&granite(), "granite");
}

#[test]
fn granitemoe_matches_llama_cpp() {
    assert_matches_llama_cpp(&granitemoe(), "granitemoe");
}

#[test]
fn lfm2_matches_llama_cpp() {
    assert_matches_llama_cpp(&lfm2(), "lfm2");
}

#[test]
fn lfm2moe_matches_llama_cpp() {
    assert_matches_llama_cpp(&lfm2moe(), "lfm2moe");
}

#[test]
fn llama4_matches_llama_cpp() {
    assert_matches_llama_cpp(&llama4(), "llama4");
}

#[test]
fn mistral3_matches_llama_cpp() {
    assert_matches_llama_cpp(&mistral3(), "mistral3");
}

#[test]
fn olmo2_matches_llama_cpp() {
    assert_matches_llama_cpp(&olmo2(), "olmo2");
}

#[test]
fn phi3_matches_llama_cpp() {
    assert_matches_llama_cpp(&phi3(), "phi3");
}

#[test]
fn glm4_matches_llama_cpp() {
    assert_matches_llama_cpp(&glm4(), "glm4");
}

#[test]
fn glm4moe_matches_llama_cpp() {
    assert_matches_llama_cpp(&glm4moe(), "glm4moe");
}

#[test]
fn gpt_oss_matches_llama_cpp() {
    assert_matches_llama_cpp(&gpt_oss(), "gpt-oss");
}

#[test]
fn smollm3_matches_llama_cpp() {
    assert_matches_llama_cpp(&smollm3(), "smollm3");
}

/// One first-step top 5 here swaps llama.cpp's fifth token for one 0.006 below it in our logits
/// (of 32.65, a 0.02% near-tie): the size of the float-rounding difference every architecture
/// shows on these files (log-probabilities differ by up to 0.014 for `llama` itself), not a
/// difference of Qwen2-MoE's. So the top 5 must match except at such near-ties (within 0.1% of
/// the logit), and everything else must match as for the others.
#[test]
fn qwen2moe_matches_llama_cpp() {
    let a = check_against_llama_cpp(&qwen2moe(), "qwen2moe");
    assert!(a.equal >= 7, "qwen2moe: only {} of 8 prompts match llama.cpp's first 16 greedy tokens", a.equal);
    assert!(a.same_top5 == 8 || a.worst_top5_relative_gap < 0.001, "qwen2moe: the first step's top 5 differ from llama.cpp's beyond a near-tie");
    assert!(a.worst_relative_gap < 0.001, "qwen2moe: a teacher-forced step prefers another token by {}", a.worst_gap);
    assert_same_distribution(&a, "qwen2moe");
}

/// Quantized weights as real files hold them: every matrix Q8_0, then every matrix Q4_K (the
/// feed-forward 512 wide and the experts and shared expert 256, so each matrix's rows are whole
/// 256-value blocks); gpt-oss's experts MXFP4 in both. Activations are then rounded to 8 bits
/// before every product, so a last-bit difference may flip a rounded value and, rarely, a
/// token: as DESIGN.md's decision 4 says, every teacher-forced step where llama.cpp's token is
/// not our argmax must be a near-tie (its logit within 1% of our best one), as in
/// `tests/formats_parity.rs`.
fn assert_quantized_match_llama_cpp(blocks: Blocks) {
    for (weights, format) in [(Q8_0, "q8_0"), (Q4_K, "q4_k")] {
        let ffn = if weights == Q4_K { 512 } else { blocks.ffn };
        let gpt_oss = blocks.arch == "gpt-oss";
        let expert_weights = blocks.experts.filter(|_| gpt_oss).map(|_| MXFP4);
        let expert_ffn = |width: usize| if weights == Q4_K && !gpt_oss { 256 } else { width };
        let experts = blocks.experts.map(|(count, used, width)| (count, used, expert_ffn(width)));
        let shared_expert = blocks.shared_expert.map(|(width, gated)| (expert_ffn(width), gated));
        let variant = Blocks { weights, expert_weights, ffn, experts, shared_expert, ..blocks.clone() };
        let name = format!("{}-{format}", blocks.arch);
        let a = check_against_llama_cpp(&variant, &name);
        assert!(a.exact_steps == a.steps || a.worst_relative_gap < 0.01, "{name}: llama.cpp's token trails our best by {} ({}% of it)", a.worst_gap, a.worst_relative_gap * 100.0);
    }
}

#[test]
fn phi3_quantized_matches_llama_cpp_up_to_near_ties() {
    assert_quantized_match_llama_cpp(phi3());
}

#[test]
fn gemma2_quantized_matches_llama_cpp_up_to_near_ties() {
    assert_quantized_match_llama_cpp(gemma2());
}

/// With every expert chosen: with 4 of 8, a last-bit difference in an 8-bit product (see
/// `tests/deepseek2.rs`' module note) now and then moves a token's router scores across a tie
/// and so chooses another expert, a step no near-tie of the logits covers (measured: 120 of 128
/// teacher-forced steps, llama.cpp's token 8% below our best at worst); chosen all, the experts'
/// weights, the selection bias aside, are still normalised and scaled, and every divergence is a
/// near-tie (Q8_0 124 of 128 steps, 0.83% at worst; Q4_K 123 of 128, 0.33%).
#[test]
fn glm4moe_quantized_matches_llama_cpp_up_to_near_ties() {
    assert_quantized_match_llama_cpp(Blocks { experts: Some((8, 8, 64)), ..glm4moe() });
}

#[test]
fn llama4_quantized_matches_llama_cpp_up_to_near_ties() {
    assert_quantized_match_llama_cpp(llama4());
}

#[test]
fn lfm2_quantized_matches_llama_cpp_up_to_near_ties() {
    assert_quantized_match_llama_cpp(lfm2());
}

#[test]
fn gpt_oss_quantized_matches_llama_cpp_up_to_near_ties() {
    assert_quantized_match_llama_cpp(gpt_oss());
}

/// Long prompts (the first 122 tokens in SmolLM2's vocabulary): longer than a sliding-window
/// layer's ring here (a window of 8 and 64 positions more, 71 rows).
const LONG_PROMPTS: [&str; 3] = [
    "The lighthouse keeper had lived on the island for thirty years, and in all that time he had never once missed lighting the lamp at dusk. Every evening he climbed the hundred and twelve steps of the spiral staircase, trimmed the wick, polished the great lens until it shone like a second sun, and watched the beam sweep out across the grey water. Ships passed in the night, some close enough that he could hear the sailors singing, others so far away that they were no more than a pinprick of light on the horizon. One winter, a storm came that was unlike any he had seen before, and",
    "fn parse_header(bytes: &[u8]) -> Result<Header, Error> {\n    if bytes.len() < 16 {\n        return Err(Error::TooShort { needed: 16, got: bytes.len() });\n    }\n    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);\n    if magic != MAGIC {\n        return Err(Error::BadMagic(magic));\n    }\n    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);\n    let count = u64::from_le_bytes(bytes[8..16].try_into().unwrap());\n    Ok(Header { magic, version, count })\n}\n\nfn main() {\n    let data = std::fs::read(\"input.bin\").unwrap();\n    match parse_header(&data) {",
    "Monday: bought apples, pears, bread, milk and eggs. Tuesday: repaired the fence on the north side of the garden, painted the shed, and planted two rows of beans. Wednesday: took the train to the city, met Anna for lunch at the little cafe near the museum, and walked along the river until the sun went down. Thursday: rain all day, so I stayed inside, read two chapters of the history book, wrote letters to my brother and to the bank, and made a large pot of soup. Friday: the neighbours came for dinner and we talked until midnight about",
];

/// The long prompts through `blocks`' model and llama.cpp, and its state cut back and restored:
/// cut back within what every layer keeps, the state keeps what the next position needs; cut
/// back past what a ring overwrote, it starts again; saved and restored into a fresh state, it
/// goes on as the original; either way the prompt's rest gives the same logits. Returns the
/// agreement, the first prompt's length and the positions of memory per layer.
fn long_prompts_and_their_state(blocks: &Blocks) -> (Agreement, usize, Vec<usize>) {
    let name = format!("{}-long", blocks.arch);
    let path = blocks_file(&source(blocks.arch), blocks, 0xA2C4_1515, &name, None);
    let result = std::panic::catch_unwind(|| {
        let a = compare_prompts(&path, &name, &LONG_PROMPTS);
        let model = Model::open(&path).unwrap();
        let weights = model.weights().unwrap();
        let prompt = model.tokenizer().encode(LONG_PROMPTS[0], true, false).unwrap();
        let mut state = weights.new_state(1024).unwrap();
        let logits = weights.forward(&mut state, &prompt).unwrap();
        let n = prompt.len();
        let same = |again: &mut State, kept: usize, how: &str| {
            assert_eq!(again.len(), kept, "{name}: {how}");
            let redone = weights.forward(again, &prompt[kept..]).unwrap();
            assert!(redone.iter().zip(&logits).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}: {how}");
        };
        for (back, kept) in [(n - 2, n - 2), (20, 0)] {
            let mut again = state.clone();
            again.truncate(back);
            same(&mut again, kept, &format!("truncated to {back}"));
        }
        let mut part = state.clone();
        part.truncate(n - 3);
        let mut restored = weights.new_state(8).unwrap();
        restored.restore(n - 3, &part.save()).unwrap();
        restored.grow(1024).unwrap();
        same(&mut restored, n - 3, "saved and restored");
        (a, n, state.layer_rows())
    });
    std::fs::remove_file(&path).ok();
    result.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Sliding-window layers keep a ring of their window, not the context: on prompts longer than
/// the ring (so it wraps while the prompt runs, a part at a time, and again while generating),
/// Gemma 2 and gpt-oss give llama.cpp's tokens as they do on short prompts, and their local
/// layers' caches hold the ring's 71 positions while the global layers hold them all; a state
/// cut back past what a ring overwrote starts again (see `State::truncate`).
#[test]
fn sliding_window_rings_match_llama_cpp_beyond_the_window() {
    for blocks in [gemma2(), gpt_oss()] {
        let name = blocks.arch;
        let (a, prompt, rows) = long_prompts_and_their_state(&blocks);
        assert!(prompt > 8 - 1 + RING_PART, "{name}: the prompt is {prompt} tokens");
        // Layers alternate local and global, the local first.
        let expected: Vec<usize> = (0..blocks.layers).map(|i| if i % 2 == 0 { 8 - 1 + RING_PART } else { 1024 }).collect();
        assert_eq!(rows, expected, "{name}: positions of memory per layer");
        // gpt-oss's second prompt parts from llama.cpp at its tenth token, a near-tie (0.0099
        // of 37.34, 0.03%): float rounding over a long context, as qwen2moe's near-tie above.
        assert!(a.equal + 1 >= LONG_PROMPTS.len(), "{name}: only {} of {} long prompts match llama.cpp's first 16 greedy tokens", a.equal, LONG_PROMPTS.len());
        assert!(a.worst_relative_gap < 0.001, "{name}: a teacher-forced step prefers another token by {}", a.worst_gap);
        assert_eq!(a.same_top5, LONG_PROMPTS.len(), "{name}: the first step's top 5 differ from llama.cpp's");
    }
}

/// LFM2's convolution layers keep their last inputs (f32, as llama.cpp keeps its convolution
/// state) in a ring of the kernel's 3 positions and 64 more, as sliding-window layers keep
/// theirs: on prompts longer than the ring its tokens are llama.cpp's, and a state cut back
/// within the ring goes on from there, one cut back further starts again. The same with a
/// sliding window of 8 positions on every attention layer (LFM2's files may give one).
#[test]
fn lfm2_convolution_state_matches_llama_cpp_beyond_its_ring() {
    let windowed = Blocks { metadata: vec![("attention.sliding_window", Meta::U32(8))], ..lfm2() };
    for (blocks, attention_rows) in [(lfm2(), 1024), (windowed, 8 - 1 + RING_PART)] {
        let (a, prompt, rows) = long_prompts_and_their_state(&blocks);
        assert!(prompt > 8 - 1 + RING_PART, "lfm2: the prompt is {prompt} tokens");
        let expected: Vec<usize> = (0..blocks.layers).map(|i| if [2, 5].contains(&i) { attention_rows } else { 3 - 1 + RING_PART }).collect();
        assert_eq!(rows, expected, "lfm2: positions of memory per layer");
        assert_eq!(a.equal, LONG_PROMPTS.len(), "lfm2: only {} of {} long prompts match llama.cpp's first 16 greedy tokens", a.equal, LONG_PROMPTS.len());
        assert_eq!(a.same_top5, LONG_PROMPTS.len(), "lfm2: the first step's top 5 differ from llama.cpp's");
    }
}

/// Llama 4 past its first chunk of 8192 positions: on a prompt of over 8,300 tokens (the long
/// prompts over and over), the chunked layers' queries from position 8192 on see their own
/// chunk only, and the global layer's queries from position 8191 on are scaled by the
/// attention temperature (by 1.069); a narrower model (hidden 64) keeps the attention's cost
/// down. The chunked layers keep a ring of a chunk and 64 positions (8,255), which wraps while
/// the continuation is generated.
#[test]
fn llama4_matches_llama_cpp_past_its_first_chunk() {
    let blocks = Blocks {
        hidden: 64,
        heads: 2,
        kv_heads: 1,
        head_dim: 32,
        ffn: 128,
        experts: Some((8, 1, 32)),
        shared_expert: Some((32, false)),
        metadata: vec![("interleave_moe_layer_step", Meta::U32(2)), ("context_length", Meta::U32(16384))],
        ..llama4()
    };
    let text = LONG_PROMPTS.concat().repeat(18);
    let name = "llama4-chunks";
    let path = blocks_file(&source(blocks.arch), &blocks, 0xA2C4_1515, name, None);
    let result = std::panic::catch_unwind(|| {
        let model = Model::open(&path).unwrap();
        let tokens = model.tokenizer().encode(&text, true, false).unwrap().len();
        let rows = model.weights().unwrap().new_state(8704).unwrap().layer_rows();
        (tokens, rows, compare_prompts_in(&path, name, &[text.as_str()], 8704))
    });
    std::fs::remove_file(&path).ok();
    let (tokens, rows, a) = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(rows, [8191 + RING_PART, 8191 + RING_PART, 8191 + RING_PART, 8704], "{name}: positions of memory per layer");
    assert!((8192 + 16..8704 - 16).contains(&tokens), "{name}: the prompt is {tokens} tokens");
    assert_eq!(a.equal, 1, "{name}: the 16 greedy tokens differ from llama.cpp's");
    assert_eq!(a.same_top5, 1, "{name}: the first step's top 5 differ from llama.cpp's");
    assert_same_distribution(&a, name);
}

/// A key an architecture cannot run without is named when it is missing.
#[test]
fn a_missing_key_is_named() {
    for (blocks, key) in [(gemma2(), "gemma2.final_logit_softcapping"), (granite(), "granite.logit_scale"), (qwen2moe(), "qwen2moe.expert_shared_feed_forward_length"), (glm4moe(), "glm4moe.expert_shared_count"), (lfm2(), "lfm2.shortconv.l_cache"), (lfm2moe(), "lfm2moe.expert_gating_func")] {
        let path = blocks_file(&source(blocks.arch), &blocks, 1, "missing-key", Some(key));
        let err = Model::open(&path).and_then(|m| m.weights().map(|_| ())).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(matches!(&err, Error::MissingMetadata { key: k } if k == key), "{key}: {err}");
    }
}

