//! Generation under a grammar on a real model (SmolLM2): sampled output keeps to the grammar,
//! and a grammar no token can continue ends in an error chunk, never a hang or a panic.

mod common;

use candlewick::{Chunk, FinishReason, GenerateOptions, Grammar, Model, Prompt, SamplingConfig};
use common::{model, SMOLLM2};
use futures::StreamExt;
use serde_json::json;

fn run(model: &Model, prompt: &str, options: GenerateOptions) -> Vec<Chunk> {
    let stream = model.generate(Prompt::User(prompt.into()), options);
    futures::executor::block_on(stream.collect::<Vec<_>>())
}

#[test]
fn sampled_output_keeps_to_a_schema() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 16}, "rank": {"type": "integer", "minimum": 1, "maximum": 9}, "tags": {"type": "array", "items": {"enum": ["old", "big", "cold"]}, "maxItems": 2}},
        "required": ["city", "rank", "tags"]
    });
    let grammar = Grammar::from_json_schema(&schema).unwrap();
    for seed in 0..4 {
        let options = GenerateOptions { max_tokens: 200, sampling: SamplingConfig { seed, temperature: 1.0, ..SamplingConfig::default() }, grammar: Some(grammar.clone()), ..GenerateOptions::default() };
        let chunks = run(&model, "Describe a city in JSON.", options);
        let Some(Chunk::Complete { text, finish_reason, .. }) = chunks.last() else { panic!("no completion: {chunks:?}") };
        assert_eq!(*finish_reason, FinishReason::Stop, "seed {seed}: {text:?}");
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("seed {seed}: not JSON ({e}): {text:?}"));
        let rank = value["rank"].as_i64().unwrap();
        assert!((1..=9).contains(&rank), "{text}");
        assert!(value["city"].as_str().unwrap().chars().count() <= 16, "{text}");
        let tags = value["tags"].as_array().unwrap();
        assert!(tags.len() <= 2 && tags.iter().all(|t| ["old", "big", "cold"].contains(&t.as_str().unwrap())), "{text}");
        let streamed: String = chunks.iter().filter_map(|c| if let Chunk::Text { text } = c { Some(text.as_str()) } else { None }).collect();
        assert_eq!(&streamed, text);
    }
}

#[test]
fn a_grammar_no_token_can_continue_ends_in_an_error_chunk() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    // After "ok", a code point no UTF-8 sequence of up to four bytes decodes to.
    let grammar = Grammar::parse(r#"root ::= "ok" [\U00400000]"#).unwrap();
    let options = GenerateOptions { max_tokens: 16, sampling: SamplingConfig::greedy(), grammar: Some(grammar), ..GenerateOptions::default() };
    let chunks = run(&model, "Say ok.", options);
    let Some(Chunk::Error { message }) = chunks.last() else { panic!("expected an error chunk: {chunks:?}") };
    assert!(message.contains("grammar allows none") && message.contains("ok"), "{message}");
}
