//! Time to first token of a new turn in a session that keeps its KV cache, beside a cold
//! start of the same conversation, on a conversation of about 1,000 tokens.
//!
//! `cargo bench --bench session` (or `make bench-session`). It prints figures; it is not a
//! timed test. Figures are medians of `RUNS` runs, on Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)
//! and SmolLM2-135M-Instruct (Q4_1), greedy, one thread and the default pool.

use candlewick::chat::Message;
use candlewick::{Chunk, GenerateOptions, Generator, Model, Prompt, SamplingConfig, Session, Usage};

const RUNS: usize = 3;
/// Tokens of conversation before the new turn, about.
const CONVERSATION_TOKENS: usize = 1000;

/// Turns of an ordinary conversation, repeated until it holds about `CONVERSATION_TOKENS`.
fn conversation(model: &Model) -> Vec<Message> {
    let turns = [
        ("How does a lighthouse keep ships off the rocks?", "Its lamp, magnified by a Fresnel lens, throws a beam that sweeps the horizon; each light has its own pattern of flashes, so a navigator who sees it knows which lighthouse it is and where the rocks lie."),
        ("Who kept the lamps lit before they were automatic?", "Keepers, often a family, lived at the station: they trimmed the wicks, wound the clockwork that turned the lens, polished the glass and logged the weather through every night."),
        ("What replaced them?", "Electric lamps, automatic lamp changers, light sensors and remote monitoring; most lighthouses were automated in the second half of the twentieth century."),
    ];
    let mut messages = vec![Message::system("You are a helpful assistant who knows the sea.")];
    let mut i = 0;
    while model.chat_tokens(&messages).map_or(0, |t| t.len()) < CONVERSATION_TOKENS {
        let (q, a) = turns[i % turns.len()];
        messages.push(Message::user(q));
        messages.push(Message::assistant(a));
        i += 1;
    }
    messages
}

fn first_token(mut generator: Generator) -> Usage {
    while let Some(chunk) = generator.next_chunk() {
        if let Chunk::Complete { usage, .. } = chunk {
            return usage;
        }
    }
    Usage::default()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    for name in ["qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"] {
        let path = candlewick::native::cache_dir().join("models").join(name);
        let Ok(model) = Model::open(&path) else {
            eprintln!("{} is missing: run scripts/fetch-models.sh", path.display());
            continue;
        };
        let history = conversation(&model);
        let question = Message::user("And what is a lightship?");
        for threads in [Some(1), None] {
            let options = GenerateOptions { max_tokens: 1, sampling: SamplingConfig::greedy(), threads, ..GenerateOptions::default() };
            let (mut cold, mut warm) = (Vec::new(), Vec::new());
            let mut tokens = (0, 0);
            for _ in 0..RUNS {
                let mut all = history.clone();
                all.push(question.clone());
                let usage = first_token(model.generator(Prompt::Messages(all), options.clone()).expect("cold generation"));
                cold.push(usage.time_to_first_token_ms);

                // The session has answered the conversation so far; the new turn reuses it.
                let mut session = Session::new(&model).expect("session");
                session.set_messages(history[..history.len() - 1].to_vec()).expect("idle");
                first_token(session.generator(Vec::new(), options.clone()).expect("warm-up turn"));
                session.set_messages(history.clone()).expect("idle");
                let usage = first_token(session.generator(vec![question.clone()], options.clone()).expect("turn"));
                warm.push(usage.time_to_first_token_ms);
                tokens = (usage.prompt_tokens, usage.cached_tokens);
            }
            let (cold, warm) = (median(cold), median(warm));
            println!(
                "{name}, threads {}: {} prompt tokens, {} cached; first token cold {cold:.0} ms, in the session {warm:.0} ms ({:.1}x shorter)",
                threads.map_or("default".to_string(), |n| n.to_string()),
                tokens.0,
                tokens.1,
                cold / warm.max(1e-9)
            );
        }
    }
}
