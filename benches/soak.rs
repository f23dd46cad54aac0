//! Soak: 1,000 generations of mixed kinds on one model (SmolLM2), printing the process's
//! resident memory at the start, after the first 20 generations and at the end. Not a timed
//! test: `make soak` runs it (and benches/soak.mjs, the same in Node.js on the npm package).
//!
//! Kinds, in turn: greedy to the end, a stream dropped after three chunks (cancelled), a
//! generation cancelled before its first token (aborted), seeded sampling, a chat of three
//! messages. The end must be within 16 MiB of the memory after 20 generations.

use std::sync::atomic::Ordering;

use candlewick::chat::Message;
use candlewick::{Chunk, GenerateOptions, Model, Prompt, SamplingConfig};
use futures::StreamExt;

const GENERATIONS: usize = 1000;
const MIB: f64 = 1024.0 * 1024.0;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

fn main() -> candlewick::Result<()> {
    let path = std::env::var_os("CANDLEWICK_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/candlewick/models"))
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = Model::open(&path)?;
    let start = resident_bytes();
    println!("soak (native): {GENERATIONS} generations on {}", path.display());
    println!("memory at start:            {:8.1} MiB", start as f64 / MIB);
    let (mut after_20, mut tokens) = (0, 0);
    for i in 0..GENERATIONS {
        let short = GenerateOptions { max_tokens: 12, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() };
        match i % 5 {
            0 => tokens += run(model.generate(Prompt::Raw(format!("Item {i}: the")), short), usize::MAX),
            1 => tokens += run(model.generate(Prompt::User(format!("Tell me a long story number {i}.")), GenerateOptions { max_tokens: 200, ..short }), 3),
            2 => {
                let mut generator = model.generator(Prompt::Raw(format!("Aborted {i}")), short)?;
                generator.cancel_flag().store(true, Ordering::Relaxed);
                while generator.next_chunk().is_some() {}
            }
            3 => {
                let sampling = SamplingConfig { seed: i as u64, ..SamplingConfig::default() };
                tokens += run(model.generate(Prompt::Raw("Once upon a time".into()), GenerateOptions { sampling, ..short }), usize::MAX);
            }
            _ => {
                let messages = vec![Message::system("Be brief."), Message::user("Hi!"), Message::assistant("Hello."), Message::user(format!("What is {i} + 1?"))];
                tokens += run(model.generate(Prompt::Messages(messages), short), usize::MAX);
            }
        }
        if i + 1 == 20 {
            after_20 = resident_bytes();
            println!("memory after 20:            {:8.1} MiB", after_20 as f64 / MIB);
        }
    }
    let end = resident_bytes();
    let growth = end as f64 - after_20 as f64;
    println!("memory at end:              {:8.1} MiB ({tokens} text chunks read)", end as f64 / MIB);
    println!("end − after 20:             {:8.1} MiB ({})", growth / MIB, if growth <= 16.0 * MIB { "within 16 MiB" } else { "MORE THAN 16 MiB" });
    Ok(())
}

/// Reads `stream` until it completes, or drops it after `keep` chunks; returns the text chunks
/// read.
fn run(mut stream: candlewick::ChunkStream, keep: usize) -> usize {
    futures::executor::block_on(async {
        let mut read = 0;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Chunk::Text { .. } | Chunk::ToolCall { .. } => read += 1,
                Chunk::Error { message } => panic!("{message}"),
                Chunk::Complete { .. } => break,
            }
            if read == keep {
                break; // dropping the stream cancels the generation
            }
        }
        read
    })
}
