//! Greedy generation compared with llama.cpp's on the raw prompts: how the synthetic-architecture
//! tests judge an architecture.

use std::path::Path;

use candlewick::{Chunk, GenerateOptions, Model, Prompt, SamplingConfig};
use serde_json::json;

use super::{llama_cpp, RAW_PROMPTS as PROMPTS};

/// How candlewick's greedy generation compares with llama.cpp's on the raw prompts.
pub struct Agreement {
    /// Prompts whose 16 free-running greedy tokens are identical.
    pub equal: usize,
    /// Prompts whose first step ranks the same five tokens in the same order.
    pub same_top5: usize,
    /// Teacher-forced steps (llama.cpp's continuation fed to our model) where llama.cpp's token
    /// is our argmax.
    pub exact_steps: usize,
    /// All teacher-forced steps.
    pub steps: usize,
    /// The largest teacher-forced gap: our best logit minus our logit for llama.cpp's token.
    pub worst_gap: f32,
    /// `worst_gap` over the magnitude of our best logit at that step.
    pub worst_relative_gap: f32,
    /// The largest difference between our log-probability and llama.cpp's of any of llama.cpp's
    /// five most likely first tokens.
    pub worst_logprob: f32,
    /// Where a first-step top 5 differs from llama.cpp's: at the first place they differ, our
    /// logit of our token minus our logit of llama.cpp's, over the first; the largest.
    pub worst_top5_relative_gap: f32,
}

/// Runs the raw prompts through the model at `path` and through llama.cpp, 16 greedy tokens each,
/// and prints what differs (`name` labels the lines).
pub fn compare(path: &Path, name: &str) -> Agreement {
    compare_prompts(path, name, &PROMPTS)
}

/// [`compare`] on `texts` instead of the raw prompts.
pub fn compare_prompts(path: &Path, name: &str, texts: &[&str]) -> Agreement {
    compare_prompts_in(path, name, texts, 1024)
}

/// [`compare_prompts`] with llama.cpp's context `context_size` positions long (for prompts
/// longer than its default 1024).
pub fn compare_prompts_in(path: &Path, name: &str, texts: &[&str], context_size: usize) -> Agreement {
    let model = Model::open(path).unwrap();
    let weights = model.weights().unwrap();
    let prompts: Vec<Vec<u32>> = texts.iter().map(|p| model.tokenizer().encode(p, true, false).unwrap()).collect();
    let reference = llama_cpp("generate.mjs", &[path.to_str().unwrap()], &json!({ "prompts": prompts, "maxTokens": 16, "topK": 5, "contextSize": context_size }));
    let mut a = Agreement { equal: 0, same_top5: 0, exact_steps: 0, steps: 0, worst_gap: 0.0, worst_relative_gap: 0.0, worst_logprob: 0.0, worst_top5_relative_gap: 0.0 };
    for (i, prompt) in prompts.iter().enumerate() {
        let want: Vec<u32> = reference["outputs"][i].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let options = GenerateOptions { max_tokens: 16, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() };
        let mut generator = model.generator(Prompt::Tokens(prompt.clone()), options).unwrap();
        while let Some(chunk) = generator.next_chunk() {
            assert!(!matches!(chunk, Chunk::Error { .. }), "{chunk:?}");
        }
        let got = generator.generated_tokens().to_vec();
        if got == want {
            a.equal += 1;
        } else {
            println!("{name}: prompt {i}: llama.cpp {want:?}\n{name}: prompt {i}: candlewick {got:?}");
        }

        // Teacher-forced: llama.cpp's continuation through our model, one step at a time.
        let mut state = weights.new_state(prompt.len() + want.len() + 1).unwrap();
        let mut logits = weights.forward(&mut state, prompt).unwrap();
        for (step, &token) in want.iter().enumerate() {
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]).then(x.cmp(&y)));
            if step == 0 {
                // The first step's five most likely tokens, and their probabilities.
                let top = reference["firstTopProbabilities"][i].as_array().unwrap();
                let ours: Vec<u64> = order[..5].iter().map(|&t| t as u64).collect();
                let theirs: Vec<u64> = top.iter().map(|p| p[0].as_u64().unwrap()).collect();
                let max = logits[order[0]];
                let log_z = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
                for p in top {
                    let ours = logits[p[0].as_u64().unwrap() as usize] - log_z;
                    a.worst_logprob = a.worst_logprob.max((ours - (p[1].as_f64().unwrap() as f32).ln()).abs());
                }
                if ours == theirs {
                    a.same_top5 += 1;
                } else {
                    let logits_of = |ids: &[u64]| ids.iter().map(|&t| format!("{t}: {:.4}", logits[t as usize])).collect::<Vec<_>>().join(", ");
                    println!("{name}: prompt {i}: top 5 ours {ours:?}\n{name}: prompt {i}: top 5 llama.cpp {}", reference["firstTopProbabilities"][i]);
                    println!("{name}: prompt {i}: our logits of both: {} / {}", logits_of(&ours), logits_of(&theirs));
                    if let Some((&o, &t)) = ours.iter().zip(&theirs).find(|(o, t)| o != t) {
                        let gap = (logits[o as usize] - logits[t as usize]) / logits[o as usize].abs().max(1.0);
                        a.worst_top5_relative_gap = a.worst_top5_relative_gap.max(gap);
                    }
                }
            }
            let best = order[0];
            let gap = logits[best] - logits[token as usize];
            a.steps += 1;
            if best == token as usize {
                a.exact_steps += 1;
            } else {
                println!("{name}: prompt {i}: step {step}: llama.cpp chose {token}, we prefer {best} by {gap:.4} (best logit {:.2})", logits[best]);
                a.worst_gap = a.worst_gap.max(gap);
                a.worst_relative_gap = a.worst_relative_gap.max(gap / logits[best].abs().max(1.0));
            }
            logits = weights.forward(&mut state, &[token]).unwrap();
        }
    }
    println!(
        "{name}: {} of {} greedy continuations equal llama.cpp's; first-step top 5 in the same order for {} (log-probabilities within {:.1e}); teacher-forced, {} of {} steps pick llama.cpp's token (largest gap otherwise {:.4}, {:.2}% of the best logit)",
        a.equal,
        prompts.len(),
        a.same_top5,
        a.worst_logprob,
        a.exact_steps,
        a.steps,
        a.worst_gap,
        a.worst_relative_gap * 100.0
    );
    a
}

/// Every prompt's 16 greedy tokens and first-step top 5 as llama.cpp's, llama.cpp's token our
/// argmax at every teacher-forced step, and the first step's log-probabilities within 0.01
/// (float rounding leaves about 0.004 here; llama.cpp's flash attention instead of its unfused
/// attention alone would leave 0.016).
pub fn assert_same_as_llama_cpp(a: &Agreement, name: &str) {
    assert_eq!(a.equal, 8, "{name}: only {} of 8 prompts match llama.cpp's first 16 greedy tokens", a.equal);
    assert_eq!(a.same_top5, 8, "{name}: the first step's top 5 differ from llama.cpp's");
    assert_eq!(a.exact_steps, a.steps, "{name}: llama.cpp's token is not our argmax at every teacher-forced step");
    assert!(a.worst_logprob < 0.01, "{name}: first-step log-probabilities differ by {}", a.worst_logprob);
}

