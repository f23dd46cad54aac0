//! Sessions keep their KV cache across turns, and a turn writes what a cold generation of the
//! same conversation writes (greedy), on real models (and on a synthetic LFM2, whose convolution
//! layers keep a recurrent state beside the KV caches).

mod common;

use candlewick::chat::{Message, Role};
use candlewick::{Chunk, Error, FinishReason, GenerateOptions, Generator, Model, Prompt, SamplingConfig, Session, Usage};
use common::synthetic::{blocks_file, Blocks};
use common::{model, QWEN25_CODER, SMOLLM2};

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() }
}

/// Runs a generation to its end: the text, the generated tokens and the usage.
fn run(mut generator: Generator) -> (String, Vec<u32>, Usage) {
    let mut pieces = String::new();
    while let Some(chunk) = generator.next_chunk() {
        match chunk {
            Chunk::Text { text } => pieces.push_str(&text),
            Chunk::Complete { text, usage, finish_reason, .. } => {
                assert_eq!(text, pieces, "the complete text is what the text chunks said");
                assert!(matches!(finish_reason, FinishReason::Stop | FinishReason::Length));
                return (text, generator.generated_tokens().to_vec(), usage);
            }
            Chunk::Error { message } => panic!("{message}"),
            Chunk::ToolCall { .. } => panic!("no tools were offered"),
        }
    }
    panic!("the generation ended without a complete chunk")
}

/// A turn of `session`, and a cold generation of the same conversation: the same tokens.
fn turn_and_cold(model: &Model, session: &mut Session, message: &str, max_tokens: usize) -> Usage {
    let mut conversation = session.messages();
    conversation.push(Message::user(message));
    let (cold_text, cold_tokens, cold_usage) = run(model.generator(Prompt::Messages(conversation.clone()), greedy(max_tokens)).unwrap());
    let (text, tokens, usage) = run(session.generator(vec![Message::user(message)], greedy(max_tokens)).unwrap());
    assert_eq!(tokens, cold_tokens, "turn {message:?}: {text:?} vs cold {cold_text:?}");
    assert_eq!(text, cold_text);
    assert_eq!(usage.prompt_tokens, cold_usage.prompt_tokens);
    assert_eq!(cold_usage.cached_tokens, 0);
    conversation.push(Message::assistant(text));
    assert_eq!(session.messages(), conversation, "the reply joined the conversation");
    usage
}

fn check_turns(which: (&str, &str)) {
    check_turns_of(&Model::open(model(which)).unwrap());
}

fn check_turns_of(model: &Model) {
    let mut session = Session::new(model).unwrap();
    session.set_messages(vec![Message::system("You are a helpful assistant. Answer briefly.")]).unwrap();
    let first = turn_and_cold(model, &mut session, "Name three rivers in Europe.", 24);
    assert_eq!(first.cached_tokens, 0);
    let mut before = first.prompt_tokens;
    for message in ["Which of them is the longest?", "Write a haiku about it.", "Thanks! 😀 One more: what is 2 + 2?"] {
        let usage = turn_and_cold(model, &mut session, message, 24);
        // The previous prompt at least is reused; only the reply's tail and the new message run.
        assert!(usage.cached_tokens >= before, "{message}: {} cached of {} (previous prompt {before})", usage.cached_tokens, usage.prompt_tokens);
        assert!(usage.cached_tokens < usage.prompt_tokens);
        before = usage.prompt_tokens;
    }
}

#[test]
fn smollm2_turns_equal_cold_generations() {
    check_turns(SMOLLM2);
}

#[test]
fn qwen25_coder_turns_equal_cold_generations() {
    check_turns(QWEN25_CODER);
}

/// LFM2's convolution state is cut back to each turn's common prefix with the caches (within
/// its ring), and the turns still write what cold generations write.
#[test]
fn lfm2_turns_equal_cold_generations() {
    let source = candlewick::gguf::Gguf::read(&mut std::io::BufReader::new(std::fs::File::open(model(SMOLLM2)).unwrap())).unwrap();
    let path = blocks_file(&source, &Blocks::lfm2(), 0xA2C4_1515, "lfm2-session", None);
    let result = std::panic::catch_unwind(|| check_turns_of(&Model::open(&path).unwrap()));
    std::fs::remove_file(&path).ok();
    result.unwrap_or_else(|e| std::panic::resume_unwind(e));
}

#[test]
fn forks_and_truncation_continue_as_cold_generations_do() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let mut session = Session::new(&model).unwrap();
    turn_and_cold(&model, &mut session, "What is a candle wick made of?", 20);
    let after_first = session.messages();

    // A fork continues on its own; the original is untouched by it.
    let mut fork = session.fork().unwrap();
    assert_eq!(fork.cached_tokens(), session.cached_tokens());
    turn_and_cold(&model, &mut fork, "And the wax?", 20);
    assert_eq!(session.messages(), after_first);
    turn_and_cold(&model, &mut session, "Is it safe?", 20);
    assert_ne!(session.messages(), fork.messages());

    // Editing the last user message: truncate to before it and ask again.
    session.truncate(2).unwrap();
    assert_eq!(session.messages(), after_first);
    assert!(session.cached_tokens() > 0);
    let usage = turn_and_cold(&model, &mut session, "Who invented candles?", 20);
    assert!(usage.cached_tokens > 0);
    // Down to nothing.
    session.truncate(0).unwrap();
    assert_eq!(session.cached_tokens(), 0);
    turn_and_cold(&model, &mut session, "Hello!", 8);
}

#[test]
fn saved_sessions_restore_to_the_same_continuation() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let mut session = Session::new(&model).unwrap();
    turn_and_cold(&model, &mut session, "Give me a word that rhymes with cat.", 16);
    let bytes = session.save().unwrap();
    let mut restored = Session::restore(&model, &bytes).unwrap();
    assert_eq!(restored.messages(), session.messages());
    assert_eq!(restored.cached_tokens(), session.cached_tokens());
    let (a, _, usage_a) = run(session.generator(vec![Message::user("Another one?")], greedy(16)).unwrap());
    let (b, _, usage_b) = run(restored.generator(vec![Message::user("Another one?")], greedy(16)).unwrap());
    assert_eq!(a, b);
    assert_eq!(usage_a.cached_tokens, usage_b.cached_tokens);
    assert!(usage_b.cached_tokens > 0);

    // Bytes that are not a saved session of this model are errors, never panics.
    let qwen = Model::open(common::model(QWEN25_CODER)).unwrap();
    assert!(matches!(Session::restore(&qwen, &bytes), Err(Error::InvalidSession { .. })));
    for cut in [0, 5, 8, 12, 16, 40, bytes.len() / 2, bytes.len() - 1] {
        assert!(matches!(Session::restore(&model, &bytes[..cut]), Err(Error::InvalidSession { .. })), "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(Session::restore(&model, &longer), Err(Error::InvalidSession { .. })));
    let mut bad_header = bytes.clone();
    bad_header[20] ^= 0x55;
    assert!(Session::restore(&model, &bad_header).is_err());
    let mut huge = b"CWSESS01".to_vec();
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(Session::restore(&model, &huge), Err(Error::InvalidSession { .. })));
}

#[test]
fn one_turn_at_a_time_and_failures_leave_the_session_usable() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let mut session = Session::new(&model).unwrap();
    let mut running = session.generator(vec![Message::user("Count to five.")], greedy(8)).unwrap();
    assert!(matches!(session.generator(vec![Message::user("Hi")], greedy(8)), Err(Error::SessionBusy)));
    assert!(matches!(session.fork(), Err(Error::SessionBusy)));
    assert!(matches!(session.truncate(0), Err(Error::SessionBusy)));
    assert!(matches!(session.save(), Err(Error::SessionBusy)));
    assert!(running.next_chunk().is_some());
    // Dropped half way: the cache comes back, the conversation is as it was.
    drop(running);
    assert!(session.messages().is_empty());
    assert!(session.cached_tokens() > 0);

    // A prompt that does not fit is an error, and the session goes on.
    let tight = GenerateOptions { context_length: Some(8), ..greedy(4) };
    assert!(matches!(session.generator(vec![Message::user("This message is longer than eight tokens, surely.")], tight), Err(Error::PromptTooLong { .. })));
    let (_, _, usage) = run(session.generator(vec![Message::user("Count to five.")], greedy(8)).unwrap());
    assert!(usage.cached_tokens > 0, "the dropped turn's prompt is still cached");

    // Cancelled turns end with `cancelled`; their reply joins the conversation.
    let mut cancelled = session.generator(vec![Message::user("Go on.")], greedy(8)).unwrap();
    cancelled.cancel_flag().store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(cancelled.next_chunk(), Some(Chunk::Complete { finish_reason: FinishReason::Cancelled, .. })));
    assert_eq!(session.messages().last().map(|m| m.role), Some(Role::Assistant));
}

/// The stream API: the session has its cache and the reply back when `Complete` arrives.
#[test]
fn streamed_turns_hand_the_session_back_by_their_end() {
    use futures::StreamExt;
    let model = Model::open(model(SMOLLM2)).unwrap();
    let mut session = Session::new(&model).unwrap();
    for message in ["Hi!", "How are you?"] {
        let chunks: Vec<Chunk> = futures::executor::block_on(session.generate(vec![Message::user(message)], greedy(8)).collect());
        assert!(matches!(chunks.last(), Some(Chunk::Complete { .. })), "{chunks:?}");
        // No waiting for the worker thread: the session is idle at once.
        assert!(session.save().is_ok());
    }
    assert_eq!(session.messages().len(), 4);
}

/// A turn longer than the cache has room for grows it, keeping the prefix it holds.
#[test]
fn a_cache_that_grows_keeps_its_prefix() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let mut session = Session::new(&model).unwrap();
    turn_and_cold(&model, &mut session, "Tell me about lighthouses.", 16);
    let long = format!("Summarise this in one line: {}", "The keeper climbed the narrow stairs to light the lamp, and ships relied on its beam. ".repeat(40));
    let usage = turn_and_cold(&model, &mut session, &long, 16);
    assert!(usage.prompt_tokens > 700, "{} prompt tokens: the cache (512 positions at first) had to grow", usage.prompt_tokens);
    assert!(usage.cached_tokens > 0);
    turn_and_cold(&model, &mut session, "Shorter, please.", 16);
}
