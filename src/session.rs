//! Sessions: a conversation that keeps its KV cache from one turn to the next.
//!
//! Each turn renders the whole conversation with the chat template, keeps the longest prefix
//! of its tokens that the cache already holds, and runs only the rest: a new user message
//! after a long conversation costs its own tokens, not the conversation's. Greedy output is
//! the same as a cold generation of the same conversation, because the forward pass gives the
//! same logits however a prompt is split into passes.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::arch::State;
use crate::chat::Message;
use crate::error::{Error, Result};
use crate::generator::{prompt_tokens, GenerateOptions, Generator, Prompt};
use crate::model::Model;
use crate::sampling::Sampler;

/// The first bytes of a saved session.
const MAGIC: &[u8; 8] = b"CWSESS01";

/// Positions a new session's cache starts with; it grows with the conversation.
const INITIAL_CAPACITY: usize = 512;

/// A conversation with a model that keeps its KV cache across turns.
///
/// Start a turn with [`Session::generator`] (step by step) or `Session::generate` (a stream,
/// natively); when it ends, the assistant's reply (text and tool calls) joins the
/// conversation. One turn runs at a time: until it ends, the session's other methods return
/// [`Error::SessionBusy`].
///
/// ```no_run
/// use candlewick::{chat::Message, Chunk, GenerateOptions, Model, Session};
///
/// fn main() -> candlewick::Result<()> {
///     let model = Model::open("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")?;
///     let mut session = Session::new(&model)?;
///     for question in ["Name a prime.", "And the next one?"] {
///         for chunk in session.generator(vec![Message::user(question)], GenerateOptions::default())? {
///             if let Chunk::Complete { text, usage, .. } = chunk {
///                 println!("{text} ({} of {} prompt tokens cached)", usage.cached_tokens, usage.prompt_tokens);
///             }
///         }
///     }
///     Ok(())
/// }
/// ```
pub struct Session {
    model: Model,
    slot: Arc<Mutex<Slot>>,
}

/// What a session holds between turns.
struct Slot {
    /// The KV cache; `None` while a turn has it.
    state: Option<State>,
    /// The tokens whose keys and values the cache holds (`state.len()` of them).
    tokens: Vec<u32>,
    /// The conversation so far.
    messages: Vec<Message>,
}

/// Where a turn's cache goes back to when it ends.
pub(crate) struct Home {
    slot: Arc<Mutex<Slot>>,
    /// The conversation the turn answers.
    conversation: Vec<Message>,
}

impl Home {
    /// Gives the cache back, holding `tokens`; after a complete turn the conversation becomes
    /// the one answered plus `reply`.
    pub(crate) fn settle(self, state: State, tokens: Vec<u32>, reply: Option<Message>) {
        let mut slot = lock(&self.slot);
        slot.state = Some(state);
        slot.tokens = tokens;
        if let Some(reply) = reply {
            let mut messages = self.conversation;
            messages.push(reply);
            slot.messages = messages;
        }
    }
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A saved session's header (the KV cache's bytes follow it).
#[derive(Serialize, Deserialize)]
struct Saved {
    vocab_size: usize,
    kv_bytes_per_token: usize,
    tokens: Vec<u32>,
    messages: Vec<Message>,
}

impl Session {
    /// An empty conversation with `model`.
    ///
    /// # Errors
    /// [`Error::WeightsNotLoaded`] for a model opened without its weights.
    pub fn new(model: &Model) -> Result<Session> {
        let weights = model.weights()?;
        let state = weights.new_state(INITIAL_CAPACITY.min(weights.config().context_length))?;
        Ok(Session::from_parts(model, state, Vec::new(), Vec::new()))
    }

    fn from_parts(model: &Model, state: State, tokens: Vec<u32>, messages: Vec<Message>) -> Session {
        Session { model: model.clone(), slot: Arc::new(Mutex::new(Slot { state: Some(state), tokens, messages })) }
    }

    /// The session's model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The conversation so far.
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.slot).messages.clone()
    }

    /// Positions the KV cache holds (0 while a turn runs).
    pub fn cached_tokens(&self) -> usize {
        lock(&self.slot).state.as_ref().map_or(0, State::len)
    }

    /// The slot between turns.
    ///
    /// # Errors
    /// [`Error::SessionBusy`] while a turn runs.
    fn idle(&self) -> Result<MutexGuard<'_, Slot>> {
        let slot = lock(&self.slot);
        if slot.state.is_none() {
            return Err(Error::SessionBusy);
        }
        Ok(slot)
    }

    /// Replaces the conversation (the cache is kept: the next turn reuses what it still
    /// shares with the new conversation).
    ///
    /// # Errors
    /// [`Error::SessionBusy`] while a turn runs.
    pub fn set_messages(&mut self, messages: Vec<Message>) -> Result<()> {
        self.idle()?.messages = messages;
        Ok(())
    }

    /// Keeps the first `messages` messages of the conversation (to edit the last one, or
    /// answer again), and cuts the cache back to what those messages' tokens can share.
    ///
    /// # Errors
    /// [`Error::SessionBusy`] while a turn runs.
    pub fn truncate(&mut self, messages: usize) -> Result<()> {
        let mut slot = self.idle()?;
        slot.messages.truncate(messages);
        let kept = match slot.messages.is_empty() {
            true => Ok(Vec::new()),
            false => self.model.chat_template().and_then(|t| t.render(&slot.messages, false)).and_then(|text| crate::chat::tokenize_rendered(self.model.tokenizer(), &text)),
        };
        // Without a template to say which tokens stay, the next turn finds the common prefix.
        if let Ok(kept) = kept {
            let common = common_prefix(&slot.tokens, &kept);
            slot.tokens.truncate(common);
            if let Some(state) = &mut slot.state {
                state.truncate(common);
            }
        }
        Ok(())
    }

    /// A copy of this conversation and its cache, to continue apart (a fork).
    ///
    /// # Errors
    /// [`Error::SessionBusy`] while a turn runs.
    pub fn fork(&self) -> Result<Session> {
        let slot = self.idle()?;
        let state = slot.state.clone().unwrap_or_default();
        Ok(Session::from_parts(&self.model, state, slot.tokens.clone(), slot.messages.clone()))
    }

    /// Starts a turn: `new_messages` (a user message, tool results, or none to let the
    /// assistant go on) join the conversation, the whole conversation is rendered, and only
    /// the tokens the cache does not already hold are run. Drive it with
    /// [`Generator::next_chunk`]; when it ends, the reply joins the conversation. A turn that
    /// fails, or is dropped before its end, leaves the conversation as it was.
    ///
    /// # Errors
    /// [`Error::SessionBusy`] while another turn runs, and the errors of [`Generator::new`].
    pub fn generator(&mut self, new_messages: Vec<Message>, options: GenerateOptions) -> Result<Generator> {
        options.validate()?;
        let weights = self.model.weights()?;
        let mut slot = self.idle()?;
        let mut conversation = slot.messages.clone();
        conversation.extend(new_messages);
        let tokens = prompt_tokens(&self.model, Prompt::Messages(conversation.clone()), &options)?;
        let capacity = options.capacity(tokens.len(), weights.config().context_length)?;
        let sampler = Sampler::new(options.sampling.clone())?;
        let mut state = slot.state.take().ok_or(Error::SessionBusy)?;
        // Keep the common prefix, but run at least the last prompt token: its logits pick the
        // first new token.
        let keep = common_prefix(&slot.tokens, &tokens).min(state.len()).min(tokens.len() - 1);
        state.truncate(keep);
        state.grow(capacity);
        let earlier_calls = conversation.iter().map(|m| m.tool_calls.len()).sum();
        let home = Home { slot: self.slot.clone(), conversation };
        drop(slot);
        Ok(Generator::start(&self.model, tokens, state, sampler, options, earlier_calls, Some(home)))
    }

    /// The session as bytes: its conversation, the tokens its cache holds and the cache itself
    /// (f16, `kv_bytes_per_token` bytes per token), for [`Session::restore`] with the same model.
    ///
    /// # Errors
    /// [`Error::SessionBusy`] while a turn runs.
    pub fn save(&self) -> Result<Vec<u8>> {
        let slot = self.idle()?;
        let Some(state) = &slot.state else { return Err(Error::SessionBusy) };
        let saved = Saved {
            vocab_size: self.model.tokenizer().vocab_size(),
            kv_bytes_per_token: state.kv_bytes_per_token(),
            tokens: slot.tokens[..state.len().min(slot.tokens.len())].to_vec(),
            messages: slot.messages.clone(),
        };
        let header = serde_json::to_vec(&saved).map_err(|e| Error::InvalidSession { reason: e.to_string() })?;
        let mut out = Vec::with_capacity(16 + header.len() + state.len() * state.kv_bytes_per_token());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&state.save());
        Ok(out)
    }

    /// A session saved by [`Session::save`] with the same model.
    ///
    /// # Errors
    /// [`Error::InvalidSession`] when `bytes` are not a saved session, or one of another model;
    /// [`Error::WeightsNotLoaded`].
    pub fn restore(model: &Model, bytes: &[u8]) -> Result<Session> {
        let weights = model.weights()?;
        let invalid = |reason: &str| Error::InvalidSession { reason: reason.to_string() };
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| invalid("the bytes do not start as a saved session does"))?;
        let (len, rest) = rest.split_first_chunk::<8>().ok_or_else(|| invalid("the header is cut short"))?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok().filter(|&n| n <= rest.len()).ok_or_else(|| invalid("the header is cut short"))?;
        let (header, cache) = rest.split_at(len);
        let saved: Saved = serde_json::from_slice(header).map_err(|e| invalid(&format!("its header is malformed ({e})")))?;
        let context = weights.config().context_length;
        if saved.vocab_size != model.tokenizer().vocab_size() {
            return Err(invalid(&format!("it was saved with a vocabulary of {} tokens, this model has {}", saved.vocab_size, model.tokenizer().vocab_size())));
        }
        if saved.tokens.len() > context || saved.tokens.iter().any(|&t| t as usize >= saved.vocab_size) {
            return Err(invalid("its tokens do not fit this model"));
        }
        let mut state = weights.new_state(INITIAL_CAPACITY.max(saved.tokens.len()).min(context).max(1))?;
        if saved.kv_bytes_per_token != state.kv_bytes_per_token() {
            return Err(invalid(&format!("its cache takes {} bytes per token, this model's {}", saved.kv_bytes_per_token, state.kv_bytes_per_token())));
        }
        state.restore(saved.tokens.len(), cache).map_err(|_| invalid("its cache's size does not match its tokens"))?;
        Ok(Session::from_parts(model, state, saved.tokens, saved.messages))
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
