//! The generation contract on a real model (SmolLM2, Qwen2.5-Coder): sampling reproducibility,
//! stop strings, UTF-8-whole deltas, cancellation by dropping the stream, errors, routes, CLI.

mod common;

use std::time::Duration;

use candlewick::{Chunk, Error, FinishReason, GenerateOptions, Model, Prompt, Route, SamplingConfig};
use common::{model, QWEN25_CODER, SMOLLM2};
use futures::StreamExt;

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() }
}

/// Runs a generation to the end: (text deltas, the final chunk).
fn run(model: &Model, prompt: Prompt, options: GenerateOptions) -> (Vec<String>, Chunk) {
    let mut generator = model.generator(prompt, options).unwrap();
    let mut deltas = Vec::new();
    let mut last = None;
    while let Some(chunk) = generator.next_chunk() {
        assert!(last.is_none(), "a chunk after the last one: {chunk:?}");
        match chunk {
            Chunk::Text { text } => deltas.push(text),
            other => last = Some(other),
        }
    }
    (deltas, last.expect("no final chunk"))
}

fn complete(chunk: &Chunk) -> (&str, FinishReason, Option<&str>) {
    match chunk {
        Chunk::Complete { text, finish_reason, stop, .. } => (text, *finish_reason, stop.as_deref()),
        other => panic!("expected a completion, got {other:?}"),
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let options = GenerateOptions {
        max_tokens: 40,
        sampling: SamplingConfig { temperature: 0.8, top_p: 0.9, seed: 42, ..SamplingConfig::default() },
        ..GenerateOptions::default()
    };
    let prompt = Prompt::User("Tell me something about the sea.".into());
    let (a, end_a) = run(&model, prompt.clone(), options.clone());
    let (b, end_b) = run(&model, prompt.clone(), options.clone());
    assert_eq!(a, b);
    assert_eq!(complete(&end_a).0, complete(&end_b).0);
    assert!(!a.is_empty());
    // A different seed takes another path (the chance of 40 identical sampled tokens is nil).
    let other = GenerateOptions { sampling: SamplingConfig { seed: 7, ..options.sampling.clone() }, ..options };
    let (c, _) = run(&model, prompt, other);
    assert_ne!(a, c);
}

#[test]
fn stop_strings() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let prompt = Prompt::Raw("The capital of France is".into());
    let mut generator = model.generator(prompt.clone(), greedy(24)).unwrap();
    while generator.next_chunk().is_some() {}
    let tokens = generator.generated_tokens().to_vec();
    let (free_deltas, free_end) = run(&model, prompt.clone(), greedy(24));
    let free_text = complete(&free_end).0.to_string();
    assert_eq!(free_deltas.concat(), free_text);

    // A stop string spanning two tokens: the end of one token's text and the start of the next.
    let tok = model.tokenizer();
    let (i, first, second) = (1..tokens.len() - 1)
        .map(|i| (i, tok.decode(&tokens[i..i + 1], false).unwrap(), tok.decode(&tokens[i + 1..i + 2], false).unwrap()))
        .find(|(_, a, b)| a.chars().count() >= 2 && !b.trim().is_empty())
        .expect("two adjacent tokens with text");
    let stop = format!("{}{}", first.chars().last().unwrap(), b_first(&second));
    let at = free_text.find(&stop).expect("the stop string is in the free-running text");
    let (deltas, end) = run(&model, prompt.clone(), GenerateOptions { stop: vec![stop.clone()], ..greedy(24) });
    let (text, reason, matched) = complete(&end);
    assert_eq!((reason, matched), (FinishReason::Stop, Some(stop.as_str())), "tokens {i}: {first:?} {second:?}");
    assert_eq!(text, &free_text[..at]);
    assert_eq!(deltas.concat(), text);
    assert!(deltas.iter().all(|d| !d.contains(&stop)));

    // A stop string that never appears changes nothing.
    let (deltas, end) = run(&model, prompt.clone(), GenerateOptions { stop: vec!["zzz-never-zzz".into()], ..greedy(24) });
    assert_eq!(complete(&end), (free_text.as_str(), FinishReason::Length, None));
    assert_eq!(deltas.concat(), free_text);

    // Text held back because it could begin a stop string is flushed when generation ends
    // another way: the stop string starts with the last character generated.
    let last = free_text.chars().last().unwrap();
    let (deltas, end) = run(&model, prompt, GenerateOptions { stop: vec![format!("{last}\u{1F600}never")], ..greedy(24) });
    assert_eq!(complete(&end), (free_text.as_str(), FinishReason::Length, None));
    assert_eq!(deltas.concat(), free_text);
}

fn b_first(s: &str) -> char {
    s.chars().next().unwrap()
}

#[test]
fn deltas_are_whole_utf8_characters() {
    let model = Model::open(model(QWEN25_CODER)).unwrap();
    let prompt = Prompt::User("Repeat exactly, nothing else: 你好，世界！😀🎉👍🏽 こんにちは".into());
    let mut generator = model.generator(prompt, greedy(48)).unwrap();
    let mut deltas = Vec::new();
    let mut end = None;
    while let Some(chunk) = generator.next_chunk() {
        match chunk {
            Chunk::Text { text } => deltas.push(text),
            other => end = Some(other),
        }
    }
    let end = end.unwrap();
    let text = complete(&end).0;
    assert_eq!(deltas.concat(), text);
    assert!(text.chars().any(|c| c as u32 > 0x2E80), "the reply has CJK or emoji: {text:?}");
    assert!(!text.contains('\u{FFFD}'), "a character was cut: {text:?}");
    // Some tokens carried only part of a character, so fewer deltas than tokens were sent.
    assert!(deltas.len() < generator.generated_tokens().len(), "{} deltas for {} tokens", deltas.len(), generator.generated_tokens().len());
}

#[test]
fn dropping_the_stream_stops_the_forward_passes() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let weights_passes = || model.weights().unwrap().forward_passes();
    let before = weights_passes();
    let mut stream = model.generate("Write a long story about a lighthouse keeper.", greedy(400));
    futures::executor::block_on(async {
        for _ in 0..3 {
            assert!(matches!(stream.next().await, Some(Chunk::Text { .. })));
        }
    });
    drop(stream);
    std::thread::sleep(Duration::from_millis(300));
    let after_drop = weights_passes();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(weights_passes(), after_drop, "forward passes went on after the stream was dropped");
    // The prefill and a handful of decode steps ran, nowhere near the 400 requested.
    assert!(after_drop - before < 20, "{} forward passes", after_drop - before);
}

#[test]
fn concurrent_generations_share_the_weights() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let collect = |stream: candlewick::ChunkStream| futures::executor::block_on(stream.collect::<Vec<_>>());
    let prompts = ["The capital of France is", "Once upon a time"];
    let alone: Vec<Vec<Chunk>> = prompts.iter().map(|p| collect(model.generate(Prompt::Raw(p.to_string()), greedy(12)))).collect();
    let streams: Vec<_> = prompts.iter().map(|p| model.generate(Prompt::Raw(p.to_string()), greedy(12))).collect();
    let together: Vec<Vec<Chunk>> = streams.into_iter().map(collect).collect();
    let texts = |runs: &[Vec<Chunk>]| runs.iter().map(|r| complete(r.last().unwrap()).0.to_string()).collect::<Vec<_>>();
    assert_eq!(texts(&alone), texts(&together));
}

#[test]
fn usage_is_reported() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let (_, end) = run(&model, Prompt::Raw("Hello".into()), greedy(8));
    let Chunk::Complete { usage, .. } = end else { panic!() };
    assert_eq!(usage.prompt_tokens, model.tokenizer().encode("Hello", true, false).unwrap().len());
    assert_eq!(usage.completion_tokens, 8);
    assert!(usage.time_to_first_token_ms > 0.0 && usage.prefill_tokens_per_second > 0.0 && usage.decode_tokens_per_second > 0.0, "{usage:?}");
}

#[test]
fn bad_input_is_an_error_naming_the_cause() {
    let missing = std::env::temp_dir().join("candlewick-no-such-model.gguf");
    let err = Model::open(&missing).unwrap_err().to_string();
    assert!(err.contains("candlewick-no-such-model.gguf"), "{err}");

    // Truncated: the real file cut in the middle of its tensor data.
    let bytes = std::fs::read(model(SMOLLM2)).unwrap();
    let err = Model::read(&mut std::io::Cursor::new(&bytes[..bytes.len() / 2])).unwrap_err();
    assert!(matches!(err, Error::Truncated { .. }), "{err}");

    // Unknown architecture: the real header with another name.
    let mut gguf = candlewick::gguf::Gguf::read(&mut std::io::Cursor::new(&bytes)).unwrap();
    gguf.metadata.insert("general.architecture".into(), candlewick::gguf::Value::String("mamba".into()));
    let err = candlewick::arch::Config::from_gguf(&gguf).unwrap_err().to_string();
    assert!(err.contains("mamba") && err.contains("qwen3moe"), "{err}");

    let model = Model::open(model(SMOLLM2)).unwrap();
    let passes = model.weights().unwrap().forward_passes();
    let long = "word ".repeat(300);
    let err = model.generator(Prompt::Raw(long), GenerateOptions { context_length: Some(64), ..greedy(8) }).err().unwrap();
    assert!(matches!(err, Error::PromptTooLong { context: 64, .. }), "{err}");
    let err = model.generator("hi", GenerateOptions { context_length: Some(1 << 20), ..greedy(8) }).err().unwrap();
    assert!(err.to_string().contains("context_length"), "{err}");
    for (sampling, name) in [
        (SamplingConfig { top_p: 1.5, ..SamplingConfig::default() }, "top_p"),
        (SamplingConfig { temperature: -0.5, ..SamplingConfig::default() }, "temperature"),
    ] {
        let err = model.generator("hi", GenerateOptions { sampling, ..GenerateOptions::default() }).err().unwrap();
        assert!(matches!(err, Error::InvalidParameter { name: n, .. } if n == name), "{err}");
    }
    assert_eq!(model.weights().unwrap().forward_passes(), passes, "a rejected request ran the model");

    // Through the stream, an error is one Error chunk.
    let chunks: Vec<Chunk> = futures::executor::block_on(model.generate("hi", GenerateOptions { max_tokens: 0, ..GenerateOptions::default() }).collect());
    assert!(matches!(&chunks[..], [Chunk::Error { message }] if message.contains("max_tokens")), "{chunks:?}");
}

#[test]
fn routes_run_real_inference_or_say_why_not() {
    // KimiK2 with no file: exactly one Error chunk naming the path it looked for.
    let missing = std::env::temp_dir().join("no-such-dir").join(Route::KimiK2.file_name());
    let chunks: Vec<Chunk> = futures::executor::block_on(Route::KimiK2.prompt_file(&missing, "hi", greedy(4)).collect());
    assert!(matches!(&chunks[..], [Chunk::Error { message }] if message.contains(&missing.display().to_string())), "{chunks:?}");

    // A real route streams real text from the model.
    let chunks: Vec<Chunk> = futures::executor::block_on(Route::SmolLM2.prompt_file(model(SMOLLM2), Prompt::Raw("The capital of France is".into()), greedy(6)).collect());
    let reference = Model::open(model(SMOLLM2)).unwrap();
    let (_, end) = run(&reference, Prompt::Raw("The capital of France is".into()), greedy(6));
    assert!(chunks[..chunks.len() - 1].iter().all(|c| matches!(c, Chunk::Text { .. })));
    assert_eq!(complete(chunks.last().unwrap()).0, complete(&end).0);

    // A route given another route's model says so.
    let chunks: Vec<Chunk> = futures::executor::block_on(Route::Gemma3.prompt_file(model(SMOLLM2), "hi", greedy(4)).collect());
    assert!(matches!(&chunks[..], [Chunk::Error { message }] if message.contains("gemma3") && message.contains("llama")), "{chunks:?}");
    assert!("kimik2".parse::<Route>().is_ok() && "nope".parse::<Route>().is_err());
}

#[test]
fn cli_generate_streams_json_lines() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_candlewick"))
        .args(["generate", "--model", model(SMOLLM2).to_str().unwrap(), "--prompt", "The capital of France is", "--raw", "--max-tokens", "8", "--temperature", "0", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "complete");
    assert_eq!(last["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 8);
    let deltas: String = lines[..lines.len() - 1].iter().map(|l| { assert_eq!(l["type"], "text"); l["text"].as_str().unwrap().to_string() }).collect();
    assert_eq!(deltas, last["text"].as_str().unwrap());
    assert!(String::from_utf8_lossy(&out.stderr).contains("decode"), "usage goes to stderr");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_candlewick"))
        .args(["generate", "--model", model(SMOLLM2).to_str().unwrap(), "--prompt", "hi", "--top-p", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("top_p"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn thread_count_changes_speed_not_output() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let prompt = Prompt::Raw("The three primary colors are".into());
    let texts: Vec<String> = [Some(1), Some(2), None]
        .into_iter()
        .map(|threads| complete(&run(&model, prompt.clone(), GenerateOptions { threads, ..greedy(12) }).1).0.to_string())
        .collect();
    assert!(texts.windows(2).all(|w| w[0] == w[1]), "{texts:?}");
    let err = model.generator("hi", GenerateOptions { threads: Some(0), ..greedy(4) }).err().unwrap();
    assert!(matches!(err, Error::InvalidParameter { name: "threads", .. }), "{err}");
}

#[test]
fn a_prompt_run_in_small_batches_generates_the_same_text() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let prompt = || Prompt::Raw("Once upon a time, in a small village, there lived an old lighthouse keeper who".into());
    let (whole, end) = run(&model, prompt(), greedy(12));
    let mut generator = model.generator(prompt(), greedy(12)).unwrap();
    let mut batches = 0;
    while generator.advance_prompt(3) {
        batches += 1;
    }
    assert!(batches >= 4, "{batches} batches");
    assert!(!generator.advance_prompt(3), "nothing left to advance");
    let mut deltas = Vec::new();
    let mut last = None;
    for chunk in generator.by_ref() {
        match chunk {
            Chunk::Text { text } => deltas.push(text),
            other => last = Some(other),
        }
    }
    assert_eq!(deltas, whole);
    assert_eq!(complete(&last.unwrap()).0, complete(&end).0);
}
