//! The block formats llama.cpp's CPU backend runs beyond the first ten (the ones Kimi K2's
//! files use, the ternary ones, MXFP4, BF16), end to end against llama.cpp: a small synthetic
//! `qwen3moe` model whose matrices, embedding included, are random blocks of one format,
//! decoded greedily by both engines.
//!
//! The blocks are random bits with their scales set so each matrix keeps the spread of the
//! Q8_0 weights it replaces (`common::quants`; these formats have no quantizer here, and none
//! is needed: any blocks with finite scales are a valid file). With quantized weights, activations are
//! rounded to 8 bits before every product, so a last-bit difference may flip a rounded value
//! and, rarely, a token: as DESIGN.md's decision 4 says, every step where llama.cpp's token is
//! not our argmax must be a near-tie (its logit within 1 % of our best one).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candlewick::gguf::{ggml_type_block, Gguf};
use candlewick::kernels::blocks::Format;
use candlewick::kernels::QMatrix;
use candlewick::{Chunk, GenerateOptions, Model, Prompt, SamplingConfig};
use common::gguf_writer::GgufFile;
use common::quants::random_blocks;
use common::synthetic::{all_metadata, qwen3_file, Rng, Shape};
use common::{llama_cpp, model, QWEN25_CODER, RAW_PROMPTS as PROMPTS};
use serde_json::json;

/// A copy of `path` with every Q8_0 matrix (rows a whole number of `format`'s blocks) replaced
/// by random blocks of `format` with the same root mean square.
fn transcoded(path: &Path, format: Format, ggml_type: u32, name: &str) -> PathBuf {
    let mut reader = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let gguf = Gguf::read(&mut reader).unwrap();
    let mut f = GgufFile::new();
    for (key, meta) in all_metadata(&gguf) {
        f = f.meta(&key, meta);
    }
    let mut rng = Rng::new(0x5EED_0000 + u64::from(ggml_type));
    for t in &gguf.tensors {
        let (per_block, block_bytes) = ggml_type_block(t.ggml_type).unwrap();
        let mut bytes = vec![0u8; (t.elements() / per_block * block_bytes) as usize];
        reader.seek(SeekFrom::Start(gguf.data_offset + t.offset)).unwrap();
        reader.read_exact(&mut bytes).unwrap();
        let cols = t.dims[0] as usize;
        let rows = (t.elements() / t.dims[0]) as usize;
        if t.ggml_type == 8 && cols.is_multiple_of(format.block().0) {
            let values = QMatrix::new(t.ggml_type, bytes, rows, cols).unwrap().to_f32().unwrap();
            let rms = (values.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() / values.len() as f64).sqrt() as f32;
            f = f.tensor(&t.name, &t.dims, ggml_type, random_blocks(ggml_type, rows * cols, rms, &mut rng));
        } else {
            f = f.tensor(&t.name, &t.dims, t.ggml_type, bytes);
        }
    }
    let out = std::env::temp_dir().join(format!("candlewick-test-{}-{name}.gguf", std::process::id()));
    std::fs::write(&out, f.bytes()).unwrap();
    out
}

/// (prompts whose 16 greedy tokens equal llama.cpp's, teacher-forced steps, steps where
/// llama.cpp's token is our argmax, largest gap otherwise relative to our best logit).
fn compare(path: &Path, name: &str) -> (usize, usize, usize, f32) {
    let model = Model::open(path).unwrap();
    let weights = model.weights().unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| model.tokenizer().encode(p, true, false).unwrap()).collect();
    let reference = llama_cpp("generate.mjs", &[path.to_str().unwrap()], &json!({ "prompts": prompts, "maxTokens": 16, "topK": 5 }));
    let (mut equal, mut steps, mut exact, mut worst) = (0, 0, 0, 0f32);
    for (i, prompt) in prompts.iter().enumerate() {
        let want: Vec<u32> = reference["outputs"][i].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        assert_eq!(want.len(), 16, "{name}: llama.cpp stopped early on prompt {i}");
        let options = GenerateOptions { max_tokens: 16, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() };
        let mut generator = model.generator(Prompt::Tokens(prompt.clone()), options).unwrap();
        while let Some(chunk) = generator.next_chunk() {
            assert!(!matches!(chunk, Chunk::Error { .. }), "{name}: {chunk:?}");
        }
        if generator.generated_tokens() == want.as_slice() {
            equal += 1;
        }
        // Teacher-forced: llama.cpp's continuation through our model, one step at a time.
        let mut state = weights.new_state(prompt.len() + want.len() + 1).unwrap();
        let mut logits = weights.forward(&mut state, prompt).unwrap();
        for (step, &token) in want.iter().enumerate() {
            let best = (0..logits.len()).max_by(|&x, &y| logits[x].total_cmp(&logits[y]).then(y.cmp(&x))).unwrap();
            steps += 1;
            if best == token as usize {
                exact += 1;
            } else {
                let gap = (logits[best] - logits[token as usize]) / logits[best].abs().max(1.0);
                println!("{name}: prompt {i} step {step}: llama.cpp chose {token}, we prefer {best} by {:.3}%", gap * 100.0);
                worst = worst.max(gap);
            }
            logits = weights.forward(&mut state, &[token]).unwrap();
        }
    }
    println!("{name}: {equal} of {} greedy continuations equal llama.cpp's; teacher-forced, {exact} of {steps} steps pick llama.cpp's token (largest gap otherwise {:.3}%)", prompts.len(), worst * 100.0);
    (equal, steps, exact, worst)
}

/// Each format's model decodes as llama.cpp's does, up to near-ties.
#[test]
fn new_formats_match_llama_cpp_up_to_near_ties() {
    let source = Gguf::read(&mut std::io::BufReader::new(std::fs::File::open(model(QWEN25_CODER)).unwrap())).unwrap();
    // Every matrix input 256 wide (a whole number of 256-value blocks): hidden 256, four
    // heads of 64, expert and dense widths 256.
    let shape = Shape { layers: 2, hidden: 256, heads: 4, kv_heads: 2, head_dim: 64, ffn: 256, experts: Some((8, 2, 256)) };
    let base = qwen3_file(&source, &shape, 0xF0F0_2026, "formats-base");
    let only = std::env::var("CANDLEWICK_PARITY_FORMATS").ok();
    let mut failures = Vec::new();
    for ggml_type in [19, 29, 16, 17, 22, 18, 21, 23, 20, 10, 11, 34, 35, 39, 30] {
        let format = Format::from_ggml(ggml_type).unwrap();
        let name = format!("{format:?}");
        if only.as_ref().is_some_and(|o| !o.split(',').any(|n| n == name)) {
            continue;
        }
        let path = transcoded(&base, format, ggml_type, &name);
        let result = std::panic::catch_unwind(|| compare(&path, &name));
        std::fs::remove_file(&path).ok();
        let (_, steps, exact, worst) = result.unwrap_or_else(|e| {
            std::fs::remove_file(&base).ok();
            std::panic::resume_unwind(e)
        });
        if steps == 0 || (exact < steps && worst >= 0.01) {
            failures.push(format!("{name}: {exact} of {steps} steps, a gap of {:.3}%", worst * 100.0));
        }
    }
    std::fs::remove_file(&base).ok();
    assert!(failures.is_empty(), "not near-ties: {failures:?}");
}
