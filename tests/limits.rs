//! Extreme sizes and edge cases, natively (tests/web.rs has the same extremes in wasm32, where
//! `usize` is 32 bits): `max_tokens` up to usize::MAX, a context length of 2^32, a KV cache no
//! memory holds, tensors whose sizes overflow 32 bits or lie past the end, no messages, a
//! conversation that ends with the assistant.

mod common;

use candlewick::chat::Message;
use candlewick::{Chunk, Error, FinishReason, GenerateOptions, Model, Prompt, SamplingConfig};
use common::patch::{set_dim, set_offset, set_u32};
use common::{model, SMOLLM2};

fn smollm2_bytes() -> Vec<u8> {
    std::fs::read(model(SMOLLM2)).unwrap()
}

/// SmolLM2 with its context length set to `context`.
fn smollm2_with_context(context: u32) -> Model {
    let mut file = smollm2_bytes();
    set_u32(&mut file, "llama.context_length", context);
    Model::from_bytes(file).unwrap()
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() }
}

/// Runs a generation to its end: the completion's finish reason and (prompt, completion) tokens.
fn run(model: &Model, prompt: Prompt, options: GenerateOptions) -> (FinishReason, usize, usize) {
    let mut generator = model.generator(prompt, options).unwrap();
    while let Some(chunk) = generator.next_chunk() {
        match chunk {
            Chunk::Complete { finish_reason, usage, .. } => return (finish_reason, usage.prompt_tokens, usage.completion_tokens),
            Chunk::Error { message } => panic!("{message}"),
            Chunk::Text { .. } | Chunk::ToolCall { .. } => {}
        }
    }
    panic!("no completion chunk");
}

#[test]
fn huge_max_tokens_run_to_the_end_of_the_context() {
    let model = smollm2_with_context(40);
    for max_tokens in [usize::MAX, (1 << 53) - 1, 1_000_000_000_000] {
        let (finish, prompt, completion) = run(&model, Prompt::Raw("One, two, three, four,".into()), greedy(max_tokens));
        // The last token comes from the logits at position 40 and is never fed back.
        assert_eq!((finish, prompt + completion), (FinishReason::Length, 41), "max_tokens {max_tokens}");
    }
}

#[test]
fn a_context_length_of_2_to_the_32_is_refused_in_words() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let options = GenerateOptions { context_length: Some(1 << 32), ..greedy(4) };
    let Err(e) = model.generator(Prompt::Raw("Hi".into()), options) else { panic!("a context of 2^32 positions was accepted") };
    assert!(matches!(e, Error::InvalidParameter { name: "context_length", .. }), "{e}");
    assert!(e.to_string().contains("beyond the model's context length 8192"), "{e}");
}

#[test]
fn a_kv_cache_larger_than_memory_is_refused_before_it_is_allocated() {
    // 2^24 positions (the largest context a file may declare) at 22.5 KiB each: 360 GiB.
    let model = smollm2_with_context(1 << 24);
    let Err(e) = model.generator(Prompt::Raw("Hi".into()), greedy(usize::MAX)) else { panic!("a 360 GiB KV cache was allocated") };
    assert!(matches!(e, Error::KvCacheTooLarge { positions: 16_777_216, .. }), "{e}");
    assert!(e.to_string().contains("360.00 GiB"), "{e}");
}

#[test]
fn tensors_past_the_end_or_too_large_are_refused_in_words() {
    type Corruption = fn(&mut [u8]);
    let cases: [(&str, Corruption); 4] = [
        ("an element count over 2^32", |f| set_dim(f, "blk.0.attn_q.weight", 1, (1 << 32) + 1)),
        ("an element count over 2^64", |f| set_dim(f, "blk.0.attn_q.weight", 1, u64::MAX / 2)),
        ("an offset past the end", |f| set_offset(f, "output_norm.weight", 1 << 40)),
        ("an offset that wraps", |f| set_offset(f, "output_norm.weight", u64::MAX - 31)),
    ];
    for (what, patch) in cases {
        let mut file = smollm2_bytes();
        patch(&mut file);
        let Err(e) = Model::from_bytes(file) else { panic!("{what}: loaded") };
        assert!(matches!(e, Error::Truncated { .. } | Error::Corrupt { .. }), "{what}: {e}");
    }
}

#[test]
fn no_messages_are_refused_in_words() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let Err(e) = model.generator(Prompt::Messages(Vec::new()), greedy(4)) else { panic!("an empty conversation was answered") };
    assert!(matches!(e, Error::InvalidMessages { .. }), "{e}");
    assert!(e.to_string().contains("no messages"), "{e}");
}

/// README: a conversation that ends with an assistant message gets a new assistant turn.
#[test]
fn a_conversation_ending_with_the_assistant_gets_a_new_assistant_turn() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let messages = [Message::user("Hi"), Message::assistant("Hello! Half an answer")];
    let rendered = model.render_chat(&messages).unwrap();
    assert!(rendered.ends_with("Hello! Half an answer<|im_end|>\n<|im_start|>assistant\n"), "{rendered:?}");
    let (finish, _, completion) = run(&model, Prompt::Messages(messages.to_vec()), greedy(8));
    assert!(completion > 0 && matches!(finish, FinishReason::Length | FinishReason::Stop));
}
