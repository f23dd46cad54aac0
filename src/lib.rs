//! candlewick runs quantized GGUF language models on the CPU — natively and in the browser
//! through WebAssembly — and streams what the model writes.
//!
//! Everything a model needs comes from its one GGUF file: the weights, the tokenizer (built
//! from the file's metadata so it tokenizes exactly as llama.cpp does), and the chat template.
//!
//! ```no_run
//! use candlewick::{chat::Message, Model};
//!
//! fn main() -> candlewick::Result<()> {
//!     let model = Model::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//!     let ids = model.tokenizer().encode("Hello, world", false, false)?;
//!     println!("{} tokens: {ids:?}", ids.len());
//!     let prompt = model.render_chat(&[Message::user("What is a candle wick?")])?;
//!     println!("{prompt}");
//!     Ok(())
//! }
//! ```
#![deny(missing_docs)]

pub mod arch;
pub mod backend;
pub mod bytes;
pub mod catalog;
pub mod chat;
pub mod error;
pub mod generator;
pub mod gguf;
#[cfg(feature = "webgpu")]
pub mod gpu;
pub mod grammar;
pub mod kernels;
pub mod model;
pub mod perplexity;
pub mod sampling;
pub mod session;
pub mod stream;
pub mod tokenizer;
pub mod tools;

#[cfg(not(target_arch = "wasm32"))]
pub mod native;
#[cfg(not(target_arch = "wasm32"))]
mod team;
#[cfg(target_arch = "wasm32")]
pub mod web;

// What differs by target (threads), under one name for the target-neutral code.
#[cfg(not(target_arch = "wasm32"))]
use native as platform;
#[cfg(target_arch = "wasm32")]
use web as platform;

/// A xorshift generator for tests: the same data on every run and every target.
#[cfg(test)]
pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

pub use catalog::Route;
pub use error::{Error, Result};
pub use generator::{GenerateOptions, Generator, Prompt};
pub use grammar::Grammar;
pub use model::Model;
pub use sampling::SamplingConfig;
pub use session::Session;
pub use tools::{Tool, ToolChoice};
pub use stream::{Chunk, ChunkStream, FinishReason, Usage};

/// The README's Rust examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
