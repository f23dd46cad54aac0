//! Eight greedy generations at once on one native model (one set of weights, a KV cache each)
//! write exactly what each writes alone.

mod common;

use candlewick::{Chunk, GenerateOptions, Model, Prompt, SamplingConfig};
use common::{model, SMOLLM2};
use futures::StreamExt;

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colours are",
    "Water boils at",
    "A haiku about the sea:",
    "The quick brown fox",
    "In 1969, the first person to walk on the moon was",
];

fn options() -> GenerateOptions {
    GenerateOptions { max_tokens: 24, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() }
}

/// The text of a generation streamed to its end.
async fn text_of(model: &Model, prompt: &str) -> String {
    let mut stream = model.generate(Prompt::Raw(prompt.into()), options());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Chunk::Complete { text, .. } => return text,
            Chunk::Error { message } => panic!("{prompt:?}: {message}"),
            Chunk::Text { .. } | Chunk::ToolCall { .. } => {}
        }
    }
    panic!("{prompt:?}: no completion");
}

#[test]
fn eight_concurrent_greedy_generations_equal_each_alone() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let alone: Vec<String> = PROMPTS.iter().map(|p| futures::executor::block_on(text_of(&model, p))).collect();
    let together = futures::executor::block_on(futures::future::join_all(PROMPTS.iter().map(|p| text_of(&model, p))));
    for ((prompt, alone), together) in PROMPTS.iter().zip(&alone).zip(&together) {
        assert!(!alone.is_empty(), "{prompt:?} wrote nothing");
        assert_eq!(together, alone, "{prompt:?}");
    }
}
