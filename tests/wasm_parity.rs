//! The npm package (wasm32, run in Node.js) and the native build write the same greedy text
//! for the same prompts, and a model read from bytes in memory equals one read from disk.
//!
//! Needs the package built into pkg/ (`make pkg`) and Node.js 20.

mod common;

use candlewick::{Chunk, GenerateOptions, Grammar, Model, Prompt, SamplingConfig};
use common::{model, wasm_package, RAW_PROMPTS, SMOLLM2};
use serde_json::json;

const MAX_TOKENS: usize = 24;

/// The whole text and token count of a greedy generation.
fn greedy(model: &Model, prompt: Prompt) -> (String, usize) {
    greedy_with(model, prompt, None)
}

/// The same under a grammar.
fn greedy_with(model: &Model, prompt: Prompt, grammar: Option<Grammar>) -> (String, usize) {
    let options = GenerateOptions { max_tokens: MAX_TOKENS, sampling: SamplingConfig::greedy(), grammar, ..GenerateOptions::default() };
    let mut generator = model.generator(prompt, options).unwrap();
    let mut last = None;
    while let Some(chunk) = generator.next_chunk() {
        last = Some(chunk);
    }
    match last {
        Some(Chunk::Complete { text, usage, .. }) => (text, usage.completion_tokens),
        other => panic!("the generation did not complete: {other:?}"),
    }
}

#[test]
fn wasm_in_node_writes_the_native_greedy_text() {
    let path = model(SMOLLM2);
    let native = Model::open(&path).unwrap();
    let chats = ["What is a candle wick?", "Name three colours of the rainbow."];
    let mut prompts: Vec<(String, bool)> = RAW_PROMPTS[..4].iter().map(|p| (p.to_string(), true)).collect();
    prompts.extend(chats.iter().map(|p| (p.to_string(), false)));

    let input = json!({
        "model": path,
        "maxTokens": MAX_TOKENS,
        "prompts": prompts.iter().map(|(text, raw)| json!({ "text": text, "raw": raw })).collect::<Vec<_>>(),
    });
    let wasm = wasm_package("greedy.mjs", &input);
    let wasm = wasm.as_array().expect("an array of results");
    assert_eq!(wasm.len(), prompts.len());

    for ((text, raw), got) in prompts.iter().zip(wasm) {
        let prompt = if *raw { Prompt::Raw(text.clone()) } else { Prompt::User(text.clone()) };
        let (want, tokens) = greedy(&native, prompt);
        assert_eq!(got["text"].as_str(), Some(want.as_str()), "prompt {text:?}: wasm and native differ");
        assert_eq!(got["completionTokens"].as_u64(), Some(tokens as u64), "prompt {text:?}");
    }
}

/// Under a grammar and a JSON Schema (given to JavaScript as an object) too.
#[test]
fn wasm_in_node_writes_the_native_greedy_text_under_grammars() {
    let path = model(SMOLLM2);
    let native = Model::open(&path).unwrap();
    let gbnf = "root ::= (\"yes\" | \"no\") \", because \" [a-z ]+ \".\"";
    let schema = json!({"type": "object", "properties": {"colour": {"enum": ["red", "green"]}, "count": {"type": "integer", "maximum": 9}}, "required": ["colour", "count"]});
    let input = json!({
        "model": path,
        "maxTokens": MAX_TOKENS,
        "prompts": [
            { "text": "Is water wet?", "raw": false, "grammar": gbnf },
            { "text": "Pick a colour and a count, as JSON.", "raw": false, "jsonSchema": schema },
        ],
    });
    let wasm = wasm_package("greedy.mjs", &input);
    let wasm = wasm.as_array().expect("an array of results");
    let runs = [("Is water wet?", Grammar::parse(gbnf).unwrap()), ("Pick a colour and a count, as JSON.", Grammar::from_json_schema(&schema).unwrap())];
    assert_eq!(wasm.len(), runs.len());
    for ((text, grammar), got) in runs.into_iter().zip(wasm) {
        let (want, tokens) = greedy_with(&native, Prompt::User(text.into()), Some(grammar));
        assert_eq!(got["text"].as_str(), Some(want.as_str()), "prompt {text:?}: wasm and native differ");
        assert_eq!(got["completionTokens"].as_u64(), Some(tokens as u64), "prompt {text:?}");
    }
}

#[test]
fn a_model_read_from_bytes_generates_as_one_read_from_disk() {
    let path = model(SMOLLM2);
    let from_disk = Model::open(&path).unwrap();
    let from_bytes = Model::from_bytes(std::fs::read(&path).unwrap()).unwrap();
    for prompt in &RAW_PROMPTS[..2] {
        assert_eq!(greedy(&from_bytes, Prompt::Raw(prompt.to_string())), greedy(&from_disk, Prompt::Raw(prompt.to_string())));
    }
    let bytes = std::fs::read(&path).unwrap();
    let cut = bytes.len() - 1000;
    let err = Model::from_bytes(bytes[..cut].to_vec()).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}
