//! The files of the scale benchmark (tests/common/scale.rs): the full-size plans have the real
//! files' tensor counts, parameters and sizes; small files of the same layout open in
//! candlewick, generate, and (Qwen3-Coder's) match llama.cpp greedily.

mod common;

use std::path::{Path, PathBuf};

use candlewick::{Chunk, GenerateOptions, Model, Prompt, SamplingConfig};
use common::scale::{kimi, more_bits, qwen3moe, tokenizer_source, Kimi, Plan, Qwen3Moe, Size, IQ1_S, IQ2_XXS, IQ4_XS, Q4_K, Q6_K, Q8_0};
use common::{llama_cpp, model, QWEN25_CODER, RAW_PROMPTS};
use serde_json::json;

const SEED: u64 = 5;
const GIB: f64 = (1u64 << 30) as f64;

fn source() -> candlewick::gguf::Gguf {
    tokenizer_source(&model(QWEN25_CODER))
}

fn type_of(plan: &Plan, name: &str) -> u32 {
    plan.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}")).ggml_type
}

/// REFERENCE.md §10: 579 tensors, 30,532,122,624 parameters, 17.28 GiB in mainline Q4_K_M.
#[test]
fn qwen3_coder_plan_has_the_real_files_shape() {
    let plan = qwen3moe(&source(), &Qwen3Moe::coder(Size::Full), "plan");
    assert_eq!(plan.tensors.len(), 579);
    assert_eq!(plan.parameters(), 30_532_122_624);
    let gib = plan.file_bytes(SEED) as f64 / GIB;
    assert!((gib - 17.28).abs() < 0.01, "{gib:.3} GiB, not 17.28");
    // The "more bits" layers of 48: 0-5, 42-47, and every third from 8.
    let q6: Vec<usize> = (0..48).filter(|&i| type_of(&plan, &format!("blk.{i}.attn_v.weight")) == Q6_K).collect();
    assert_eq!(q6, (0..48).filter(|&i| more_bits(i, 48)).collect::<Vec<_>>());
    assert_eq!(q6.len(), 24);
    assert_eq!(q6[..8], [0, 1, 2, 3, 4, 5, 8, 11]);
    assert_eq!(type_of(&plan, "blk.6.ffn_down_exps.weight"), Q4_K);
    assert_eq!(type_of(&plan, "blk.8.ffn_down_exps.weight"), Q6_K);
    assert_eq!(type_of(&plan, "token_embd.weight"), Q4_K);
    assert_eq!(type_of(&plan, "output.weight"), Q6_K);
    let experts = plan.tensors.iter().find(|t| t.name == "blk.0.ffn_down_exps.weight").unwrap();
    assert_eq!(experts.dims, [768, 2048, 128]);
}

/// Kimi K2 at full width, 3 blocks: one dense, two of 384 experts; about 9 GB.
#[test]
fn kimi_plan_has_full_width_blocks() {
    let plan = kimi(&source(), &Kimi::k2(Size::Full), "plan");
    // 2 + 3 × 10 attention and norm tensors + 3 dense FFN + 2 × 8 MoE tensors.
    assert_eq!(plan.tensors.len(), 2 + 30 + 3 + 16 + 1);
    let dims = |name: &str| plan.tensors.iter().find(|t| t.name == name).unwrap().dims.clone();
    assert_eq!(dims("blk.1.attn_k_b.weight"), [128, 512, 64]);
    assert_eq!(dims("blk.1.attn_v_b.weight"), [512, 128, 64]);
    assert_eq!(dims("blk.2.ffn_gate_exps.weight"), [7168, 2048, 384]);
    assert_eq!(dims("token_embd.weight"), [7168, 163840]);
    assert_eq!(type_of(&plan, "blk.1.ffn_up_exps.weight"), IQ1_S);
    assert_eq!(type_of(&plan, "blk.1.ffn_down_exps.weight"), IQ2_XXS);
    assert_eq!(type_of(&plan, "blk.2.ffn_down_shexp.weight"), IQ4_XS);
    assert_eq!(type_of(&plan, "blk.0.attn_k_b.weight"), Q8_0);
    let gb = plan.file_bytes(SEED) as f64 / 1e9;
    assert!((8.5..10.0).contains(&gb), "{gb:.2} GB");
}

/// Writes a small plan under the system temp dir (each test its own file).
fn write_small(plan: &Plan, name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("candlewick-scale-{}-{name}.gguf", std::process::id()));
    plan.write(&path, SEED).unwrap();
    assert!(plan.is_written(&path, SEED), "the file just written is recognised as complete");
    path
}

/// Greedy continuation of `prompt`, at most `max_tokens`.
fn greedy(model: &Model, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let options = GenerateOptions { max_tokens, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() };
    let mut generator = model.generator(Prompt::Tokens(prompt.to_vec()), options).unwrap();
    while let Some(chunk) = generator.next_chunk() {
        if let Chunk::Error { message } = chunk {
            panic!("generation failed: {message}");
        }
    }
    generator.generated_tokens().to_vec()
}

/// As tests/generate_parity.rs: a step where llama.cpp's token is not our argmax must be a
/// near-tie, our logit for it within 1 % of the logit scale of our best (DESIGN.md decision 4).
const NEAR_TIE: f32 = 0.01;

/// Free-running greedy output beside llama.cpp's, and teacher-forced agreement at every step.
fn matches_llama_cpp(label: &str, path: &Path, max_tokens: usize) {
    let model = Model::open(path).unwrap();
    let prompts: Vec<Vec<u32>> = RAW_PROMPTS[..4].iter().map(|p| model.tokenizer().encode(p, true, false).unwrap()).collect();
    let out = llama_cpp("generate.mjs", &[path.to_str().unwrap()], &json!({ "prompts": prompts, "maxTokens": max_tokens }));
    let want: Vec<Vec<u32>> =
        out["outputs"].as_array().unwrap().iter().map(|o| o.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()).collect();
    let weights = model.weights().unwrap();
    let (mut equal, mut exact, mut steps) = (0, 0, 0);
    for (prompt, want) in prompts.iter().zip(&want) {
        let got = greedy(&model, prompt, max_tokens);
        assert!(!got.is_empty(), "{label}: no token generated");
        println!("{label}: llama.cpp {want:?}\n{:>w$}  candlewick {got:?}", "", w = label.len());
        equal += usize::from(&got == want);
        let mut state = weights.new_state(prompt.len() + want.len() + 1).unwrap();
        let mut logits = weights.forward(&mut state, prompt).unwrap();
        for (step, &token) in want.iter().enumerate() {
            let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a))).unwrap();
            let gap = logits[best] - logits[token as usize];
            let tolerance = NEAR_TIE * logits[best].abs().max(1.0);
            assert!(gap <= tolerance, "{label}: step {step}: llama.cpp's token {token} is {gap} below our best {best}: not a near-tie");
            exact += usize::from(best == token as usize);
            steps += 1;
            logits = weights.forward(&mut state, &[token]).unwrap();
        }
    }
    println!("{label}: {equal} of {} continuations identical; teacher-forced {exact} of {steps} steps exact", prompts.len());
    assert!(exact * 100 >= steps * 90, "{label}: only {exact} of {steps} teacher-forced steps agree exactly");
    assert!(equal * 2 >= prompts.len(), "{label}: only {equal} of {} continuations identical", prompts.len());
}

#[test]
fn small_qwen3_coder_shaped_file_matches_llama_cpp() {
    let source = source();
    let plan = qwen3moe(&source, &Qwen3Moe::coder(Size::Small), "small Qwen3-Coder shape");
    // The small file keeps the mix: Q6_K attn_v in its "more bits" layers (2 and 3 of 4).
    assert_eq!(type_of(&plan, "blk.2.attn_v.weight"), Q6_K);
    assert_eq!(type_of(&plan, "blk.1.attn_v.weight"), Q4_K);
    let path = write_small(&plan, "qwen3-coder");
    matches_llama_cpp("small Qwen3-Coder shape", &path, 8);
    std::fs::remove_file(&path).unwrap();
}

/// The padded vocabulary tokenizes as the Qwen2.5-Coder file it came from (no weights needed).
#[test]
fn small_kimi_shaped_file_tokenizes_as_its_source() {
    let source = source();
    let plan = kimi(&source, &Kimi::k2(Size::Small), "small Kimi shape");
    let path = write_small(&plan, "kimi-tokenizer");
    let ours = Model::open_without_weights(&path).unwrap();
    let original = Model::open_without_weights(model(QWEN25_CODER)).unwrap();
    assert_eq!(ours.tokenizer().vocab_size(), 163_840);
    for prompt in RAW_PROMPTS {
        assert_eq!(ours.tokenizer().encode(prompt, true, false).unwrap(), original.tokenizer().encode(prompt, true, false).unwrap(), "{prompt:?}");
    }
    std::fs::remove_file(&path).unwrap();
}

/// llama.cpp runs the small Kimi-shaped file: its IQ blocks and MLA metadata are well formed.
#[test]
fn small_kimi_shaped_file_runs_in_llama_cpp() {
    let source = source();
    let plan = kimi(&source, &Kimi::k2(Size::Small), "small Kimi shape");
    let path = write_small(&plan, "kimi-llama");
    let ids = Model::open_without_weights(&path).unwrap().tokenizer().encode(RAW_PROMPTS[0], true, false).unwrap();
    let out = llama_cpp("generate.mjs", &[path.to_str().unwrap()], &json!({ "prompts": [ids], "maxTokens": 4 }));
    std::fs::remove_file(&path).unwrap();
    let tokens = out["outputs"][0].as_array().unwrap();
    assert!(!tokens.is_empty() && tokens.len() <= 4, "llama.cpp generated {tokens:?}");
}

/// candlewick opens the small Kimi-shaped file (IQ1_S, IQ2_XXS, IQ4_XS, Q8_0, Q4_K, Q6_K), generates, and
/// matches llama.cpp greedily (or at near-ties).
#[test]
fn small_kimi_shaped_file_matches_llama_cpp() {
    let source = source();
    let plan = kimi(&source, &Kimi::k2(Size::Small), "small Kimi shape");
    let path = write_small(&plan, "kimi");
    matches_llama_cpp("small Kimi shape", &path, 8);
    std::fs::remove_file(&path).unwrap();
}
