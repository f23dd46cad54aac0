//! What a generation yields — [`Chunk`]s — and the `futures::Stream` they arrive on.
//!
//! The contract: zero or more [`Chunk::Text`] deltas (complete UTF-8, never part of a stop
//! string or of a tool call's markup) and [`Chunk::ToolCall`]s, then exactly one
//! [`Chunk::Complete`] or [`Chunk::Error`], then the end.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::channel::mpsc;
use futures::Stream;
use serde::Serialize;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model wrote an end-of-generation token, or a stop string appeared.
    Stop,
    /// The token limit or the end of the context was reached.
    Length,
    /// The turn ended after the model called tools ([`Chunk::ToolCall`]s).
    ToolCalls,
    /// The reader went away or asked to stop.
    Cancelled,
}

/// Token counts and speeds of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV cache entries a [`crate::Session`] kept from an earlier turn,
    /// so they were not run again (0 outside a session).
    pub cached_tokens: usize,
    /// Tokens generated (including an end-of-generation token).
    pub completion_tokens: usize,
    /// From the start of the prompt's forward pass to the first sampled token.
    pub time_to_first_token_ms: f64,
    /// Prompt tokens per second of prefill.
    pub prefill_tokens_per_second: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_second: f64,
}

/// One piece of a generation's output.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Chunk {
    /// New text: complete UTF-8 characters, never part of a stop string or of a tool call's
    /// markup.
    Text {
        /// The new text.
        text: String,
    },
    /// A complete tool call the model wrote.
    ToolCall {
        /// An id for the call, unique within the conversation, to answer it with (a `tool`
        /// message's `tool_call_id`).
        id: String,
        /// The function's name.
        name: String,
        /// The arguments, a JSON object as a string (as OpenAI's API gives them).
        arguments: String,
    },
    /// The end of a successful generation; always the last chunk.
    Complete {
        /// The whole generated text (what every `Text` chunk said, in order).
        text: String,
        /// Why generation ended.
        finish_reason: FinishReason,
        /// The stop string that ended it, if one did.
        stop: Option<String>,
        /// Counts and timings.
        usage: Usage,
    },
    /// The generation failed; always the last chunk.
    Error {
        /// The cause, in words a user can act on.
        message: String,
    },
}

impl Chunk {
    /// Whether this chunk ends the stream.
    pub fn is_last(&self) -> bool {
        matches!(self, Chunk::Complete { .. } | Chunk::Error { .. })
    }
}

/// A stream of [`Chunk`]s fed by a generation running elsewhere (a worker thread natively).
/// Dropping it stops the generation within one token.
pub struct ChunkStream {
    receiver: mpsc::UnboundedReceiver<Chunk>,
    cancel: Arc<AtomicBool>,
}

/// The producing side of a [`ChunkStream`].
pub struct ChunkSender {
    sender: mpsc::UnboundedSender<Chunk>,
    cancel: Arc<AtomicBool>,
}

impl ChunkStream {
    /// A connected stream and sender.
    pub fn channel() -> (ChunkSender, ChunkStream) {
        let (sender, receiver) = mpsc::unbounded();
        let cancel = Arc::new(AtomicBool::new(false));
        (ChunkSender { sender, cancel: cancel.clone() }, ChunkStream { receiver, cancel })
    }

    /// A stream of one `Error` chunk.
    pub fn failed(message: String) -> ChunkStream {
        let (tx, rx) = ChunkStream::channel();
        tx.send(Chunk::Error { message });
        rx
    }

    /// Asks the generation to stop; it ends with `finish_reason: cancelled`.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl ChunkSender {
    /// Sends a chunk; false when the stream is gone.
    pub fn send(&self, chunk: Chunk) -> bool {
        self.sender.unbounded_send(chunk).is_ok()
    }

    /// The flag the stream sets when it is dropped or cancelled.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

impl Stream for ChunkStream {
    type Item = Chunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        self.cancel();
    }
}
