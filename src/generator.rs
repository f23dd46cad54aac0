//! The step engine every target drives: prefill, then one decode step per token, yielding the
//! [`Chunk`] contract through [`Generator::next_chunk`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use web_time::Instant;

use crate::arch::State;
use crate::chat::Message;
use crate::error::{Error, Result};
use crate::grammar::{Grammar, GrammarState};
use crate::model::Model;
use crate::sampling::{Sampler, SamplingConfig};
use crate::session::Home;
use crate::stream::{Chunk, FinishReason, Usage};
use crate::tools::{self, Parsed, Tool, ToolCall, ToolCallParser, ToolChoice, ToolFormat};

/// Prompt tokens run in one forward pass at most (bounds the attention scratch memory).
const PREFILL_BATCH: usize = 256;

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// One user message, rendered with the model's chat template.
    User(String),
    /// A conversation, rendered with the model's chat template.
    Messages(Vec<Message>),
    /// Text fed as is (BOS first if the file's `add_bos_token` says so), no template.
    Raw(String),
    /// Token ids fed as is.
    Tokens(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(text: &str) -> Prompt {
        Prompt::User(text.to_string())
    }
}

impl From<String> for Prompt {
    fn from(text: String) -> Prompt {
        Prompt::User(text)
    }
}

impl From<Vec<Message>> for Prompt {
    fn from(messages: Vec<Message>) -> Prompt {
        Prompt::Messages(messages)
    }
}

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate (default 512).
    pub max_tokens: usize,
    /// The sampler chain (default: llama.cpp's defaults; [`SamplingConfig::greedy`] for argmax).
    pub sampling: SamplingConfig,
    /// Strings that end generation when the model writes them; they are not part of the text.
    pub stop: Vec<String>,
    /// Positions the KV cache holds. Default: the prompt plus `max_tokens`, at most the model's
    /// context length.
    pub context_length: Option<usize>,
    /// Threads the forward passes use (natively; the browser build has one). Default: one per
    /// core.
    pub threads: Option<usize>,
    /// Functions the model may call, handed to the chat template as `tools`; the calls it
    /// writes arrive as [`Chunk::ToolCall`]s.
    pub tools: Vec<Tool>,
    /// Whether the model may call the tools (default [`ToolChoice::Auto`]).
    pub tool_choice: ToolChoice,
    /// Constrains the output to this grammar (see [`crate::grammar`]): tokens that cannot
    /// continue it are removed before the sampler chain, and generation can end only where the
    /// grammar can. For JSON Schema, [`Grammar::from_json_schema`].
    pub grammar: Option<Grammar>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 512,
            sampling: SamplingConfig::default(),
            stop: Vec::new(),
            context_length: None,
            threads: None,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            grammar: None,
        }
    }
}

impl GenerateOptions {
    /// Checks every parameter.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the first out-of-range parameter.
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(Error::InvalidParameter { name: "max_tokens", reason: "must be at least 1".into() });
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::InvalidParameter { name: "stop", reason: "a stop string cannot be empty".into() });
        }
        if self.context_length == Some(0) {
            return Err(Error::InvalidParameter { name: "context_length", reason: "must be at least 1".into() });
        }
        if let Some(n) = self.threads.filter(|n| !(1..=1024).contains(n)) {
            return Err(Error::InvalidParameter { name: "threads", reason: format!("{n} is not in 1..=1024") });
        }
        tools::validate_tools(&self.tools)?;
        self.tool_choice.validate(&self.tools)?;
        self.sampling.validate()
    }

    /// The tools the model is offered: none when `tool_choice` is `none`.
    pub fn offered_tools(&self) -> &[Tool] {
        match self.tool_choice {
            ToolChoice::None => &[],
            _ => &self.tools,
        }
    }

    /// The positions the KV cache must hold for a prompt of `prompt` tokens: the prompt plus
    /// `max_tokens`, or `context_length` when given, at most `model_context`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a `context_length` beyond the model's,
    /// [`Error::PromptTooLong`] when the prompt does not fit.
    pub(crate) fn capacity(&self, prompt: usize, model_context: usize) -> Result<usize> {
        let capacity = match self.context_length {
            Some(n) if n > model_context => {
                return Err(Error::InvalidParameter { name: "context_length", reason: format!("{n} is beyond the model's context length {model_context}") })
            }
            Some(n) => n,
            // Saturating: `max_tokens` may be usize::MAX (a JavaScript 1e12 in wasm32).
            None => prompt.saturating_add(self.max_tokens).min(model_context),
        };
        if prompt > capacity {
            return Err(Error::PromptTooLong { tokens: prompt, context: capacity });
        }
        Ok(capacity)
    }
}

/// The prompt's tokens: chat prompts rendered with the template (offering the tools), raw text
/// tokenized as is.
///
/// # Errors
/// As [`Model::chat_tokens_with_tools`] and [`crate::tokenizer::Tokenizer::encode`];
/// [`Error::InvalidParameter`] for a prompt without tokens.
pub(crate) fn prompt_tokens(model: &Model, prompt: Prompt, options: &GenerateOptions) -> Result<Vec<u32>> {
    let tools = options.offered_tools();
    let tokens = match prompt {
        Prompt::User(text) => model.chat_tokens_with_tools(&[Message::user(text)], tools)?,
        Prompt::Messages(messages) => model.chat_tokens_with_tools(&messages, tools)?,
        Prompt::Raw(text) => model.tokenizer().encode(&text, true, false)?,
        Prompt::Tokens(ids) => ids,
    };
    if tokens.is_empty() {
        return Err(Error::InvalidParameter { name: "prompt", reason: "the prompt has no tokens".into() });
    }
    Ok(tokens)
}

/// How the model's chat template writes tool calls (generic without a template). Compiling the
/// template costs, so only generations with tools ask.
fn tool_format(model: &Model) -> ToolFormat {
    model.chat_template().map_or(ToolFormat::Generic, |t| t.tool_format())
}

/// One generation in progress. Call [`Generator::next_chunk`] until it returns `None`.
pub struct Generator {
    model: Model,
    state: State,
    sampler: Sampler,
    /// Where the output is in `options.grammar`, when there is one.
    grammar: Option<GrammarState>,
    options: GenerateOptions,
    /// Prompt tokens not yet run (all of them before the first step).
    unprocessed: Vec<u32>,
    /// Prompt and generated tokens, for the penalties.
    history: Vec<u32>,
    prompt_tokens: usize,
    /// Prompt tokens already in the KV cache when the generation began (a session's turn).
    cached_tokens: usize,
    completion_tokens: usize,
    /// Bytes of a UTF-8 character not yet complete.
    partial: Vec<u8>,
    /// Decoded text held back because it could be the start of a stop string.
    held: String,
    /// Everything emitted so far.
    text: String,
    /// Finds tool calls in the text, when tools are offered.
    tool_parser: Option<ToolCallParser>,
    /// Control tokens that are tool-call markup, written out for the parser.
    markup_tokens: Vec<u32>,
    /// The calls found so far.
    calls: Vec<ToolCall>,
    /// Calls made earlier in the conversation: new calls' ids count on from here.
    first_call: usize,
    /// The session the KV cache goes back to when the generation ends.
    home: Option<Home>,
    outbox: VecDeque<Chunk>,
    finished: bool,
    cancel: Arc<AtomicBool>,
    started: Option<Instant>,
    first_token: Option<Instant>,
    /// Set when the caller runs the forward passes on a device of its own (the browser's GPU,
    /// whose logits arrive asynchronously) and hands the logits to [`Generator::take_logits`];
    /// `state` is then empty and this counts the positions.
    external: Option<Positions>,
}

/// The positions a caller-driven device has filled, and how many its cache holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Positions {
    len: usize,
    capacity: usize,
}

impl Generator {
    /// Prepares a generation: renders and tokenizes the prompt and allocates the KV cache. No
    /// forward pass runs until the first [`Generator::next_chunk`].
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for an out-of-range option, [`Error::Grammar`] for a grammar
    /// too ambiguous to start, [`Error::NoChatTemplate`] /
    /// [`Error::Template`] for a chat prompt the model cannot render, [`Error::PromptTooLong`]
    /// when the prompt does not fit in the context, [`Error::WeightsNotLoaded`].
    pub fn new(model: &Model, prompt: Prompt, options: GenerateOptions) -> Result<Generator> {
        options.validate()?;
        let weights = model.weights()?;
        let earlier_calls = match &prompt {
            Prompt::Messages(messages) => messages.iter().map(|m| m.tool_calls.len()).sum(),
            _ => 0,
        };
        let tokens = prompt_tokens(model, prompt, &options)?;
        let capacity = options.capacity(tokens.len(), weights.config().context_length)?;
        let state = weights.new_state(capacity)?;
        let sampler = Sampler::new(options.sampling.clone())?;
        let grammar = Generator::grammar_state(model, &options)?;
        Ok(Generator::start(model, tokens, state, sampler, grammar, options, earlier_calls, None))
    }

    // Only the browser's GPU (web.rs) drives the passes itself so far.
    #[cfg_attr(not(all(target_arch = "wasm32", feature = "webgpu")), allow(dead_code))]
    /// As [`Generator::new`], but the caller runs the forward passes on a device of its own:
    /// it asks [`Generator::next_input`] for the tokens to run, runs them on a state of the
    /// returned capacity, and gives the logits to [`Generator::take_logits`]. No CPU KV cache
    /// is allocated.
    ///
    /// # Errors
    /// As [`Generator::new`].
    pub(crate) fn on_device(model: &Model, prompt: Prompt, options: GenerateOptions) -> Result<(Generator, usize)> {
        options.validate()?;
        let weights = model.weights()?;
        let tokens = prompt_tokens(model, prompt, &options)?;
        let capacity = options.capacity(tokens.len(), weights.config().context_length)?;
        let sampler = Sampler::new(options.sampling.clone())?;
        let grammar = Generator::grammar_state(model, &options)?;
        let mut generator = Generator::start(model, tokens, State::default(), sampler, grammar, options, 0, None);
        generator.external = Some(Positions { len: 0, capacity });
        Ok((generator, capacity))
    }

    /// Where a generation with `options` starts in its grammar: the options' own, or the one
    /// a tool choice of `required` or a named function imposes (the format's markup of calls);
    /// `None` without either.
    ///
    /// # Errors
    /// [`Error::Grammar`] / [`Error::JsonSchema`] when the grammar cannot start or a tool's
    /// schema does not convert; [`Error::InvalidParameter`] for a grammar beside a tool choice
    /// that imposes one.
    pub(crate) fn grammar_state(model: &Model, options: &GenerateOptions) -> Result<Option<GrammarState>> {
        // Only a tool choice that imposes a grammar needs the template's format.
        let calls = match options.tool_choice {
            ToolChoice::Auto | ToolChoice::None => None,
            _ => options.tool_choice.grammar(tool_format(model), options.offered_tools())?,
        };
        match (calls, &options.grammar) {
            (Some(_), Some(_)) => Err(Error::InvalidParameter { name: "grammar", reason: "tool_choice `required` or a named function imposes its own grammar; give one or the other".into() }),
            (Some(calls), None) => GrammarState::new(&calls).map(Some),
            (None, grammar) => grammar.as_ref().map(GrammarState::new).transpose(),
        }
    }

    /// A generation of `tokens` on `state`, whose first `state.len()` positions already hold
    /// the same first tokens (a session's cache, truncated to the common prefix), in a
    /// conversation that made `earlier_calls` tool calls before, under `grammar`
    /// ([`Generator::grammar_state`]); `home` takes the cache back at the end.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(model: &Model, tokens: Vec<u32>, state: State, sampler: Sampler, grammar: Option<GrammarState>, options: GenerateOptions, earlier_calls: usize, home: Option<Home>) -> Generator {
        let cached_tokens = state.len();
        let tools = options.offered_tools().to_vec();
        let (tool_parser, markup_tokens) = match tools.is_empty() {
            true => (None, Vec::new()),
            false => {
                let format = tool_format(model);
                (Some(ToolCallParser::new(format, tools)), markup_token_ids(model, format))
            }
        };
        Generator {
            model: model.clone(),
            state,
            sampler,
            grammar,
            prompt_tokens: tokens.len(),
            cached_tokens,
            history: tokens.clone(),
            unprocessed: tokens[cached_tokens..].to_vec(),
            options,
            completion_tokens: 0,
            partial: Vec::new(),
            held: String::new(),
            text: String::new(),
            tool_parser,
            markup_tokens,
            calls: Vec::new(),
            first_call: earlier_calls,
            home,
            outbox: VecDeque::new(),
            finished: false,
            cancel: Arc::new(AtomicBool::new(false)),
            started: None,
            first_token: None,
            external: None,
        }
    }

    /// A flag that, once set, ends the generation with `finish_reason: cancelled` before its
    /// next forward pass.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Uses `flag` as the cancellation flag (e.g. the one a stream sets when dropped).
    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = flag;
    }

    /// The prompt's tokens count.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The tokens generated so far (including an end-of-generation token).
    pub fn generated_tokens(&self) -> &[u32] {
        &self.history[self.prompt_tokens..]
    }

    /// Runs until there is something to say: the next text delta, then the completion (or an
    /// error). `None` after the last chunk.
    pub fn next_chunk(&mut self) -> Option<Chunk> {
        while self.outbox.is_empty() && !self.finished {
            if let Err(e) = self.step() {
                self.outbox.clear();
                self.fail(e);
            }
        }
        self.outbox.pop_front()
    }

    /// Ends with an `Error` chunk; a session gets its cache back, without this turn.
    fn fail(&mut self, e: Error) {
        self.outbox.push_back(Chunk::Error { message: e.to_string() });
        self.finished = true;
        self.go_home(None);
    }

    /// Gives a session its cache back, with the tokens it holds and, after a complete turn,
    /// the assistant's reply.
    fn go_home(&mut self, reply: Option<Message>) {
        if let Some(home) = self.home.take() {
            let mut state = std::mem::take(&mut self.state);
            state.truncate(state.len()); // a pass that failed half way may have filled some layers
            let cached = self.history[..state.len().min(self.history.len())].to_vec();
            home.settle(state, cached, reply);
        }
    }

    /// Runs the next `batch` tokens of the prompt's forward pass, when more than that is left,
    /// and says whether it did (the logits do not depend on how the prompt is split). A caller on one thread (the browser) calls this until it is
    /// false, handling other work in between, before [`Generator::next_chunk`] runs the last
    /// batch and samples; a long prompt then never blocks that thread for long. An error is
    /// kept for `next_chunk` to report.
    pub fn advance_prompt(&mut self, batch: usize) -> bool {
        let batch = batch.clamp(1, PREFILL_BATCH);
        if self.finished || self.external.is_some() || self.unprocessed.len() <= batch || self.cancel.load(Ordering::Relaxed) {
            return false;
        }
        let batch: Vec<u32> = self.unprocessed.drain(..batch).collect();
        self.started.get_or_insert_with(Instant::now);
        let result = self.model.weights().and_then(|weights| {
            let state = &mut self.state;
            crate::platform::with_threads(self.options.threads, || weights.forward(state, &batch))
        });
        if let Err(e) = result {
            self.fail(e);
            return false;
        }
        true
    }

    /// One token: forward → sample → detokenize → stop check (→ tool calls, in `emit`).
    fn step(&mut self) -> Result<()> {
        let Some(input) = self.next_input() else { return Ok(()) };
        // Forward: the whole prompt first (in batches), then the token sampled last.
        let weights = self.model.weights()?;
        let mut logits = Vec::new();
        for batch in input.chunks(PREFILL_BATCH) {
            if self.cancel.load(Ordering::Relaxed) {
                return self.finish(FinishReason::Cancelled, None);
            }
            let state = &mut self.state;
            logits = crate::platform::with_threads(self.options.threads, || weights.forward(state, batch))?;
        }
        self.take_logits(&logits)
    }

    /// The tokens the next forward pass runs: what is left of the prompt, then the token
    /// sampled last; `None` when the generation has ended instead (cancelled, the context
    /// full, or already finished), its last chunks queued.
    pub(crate) fn next_input(&mut self) -> Option<Vec<u32>> {
        if self.finished {
            return None;
        }
        if self.cancel.load(Ordering::Relaxed) {
            let _ = self.finish(FinishReason::Cancelled, None);
            return None;
        }
        let input = match self.unprocessed.is_empty() {
            false => std::mem::take(&mut self.unprocessed),
            true => vec![*self.history.last().unwrap_or(&0)],
        };
        let (len, capacity) = match &self.external {
            Some(p) => (p.len, p.capacity),
            None => (self.state.len(), self.state.capacity()),
        };
        if len + input.len() > capacity {
            let _ = self.finish(FinishReason::Length, None); // the context is full
            return None;
        }
        if let Some(p) = &mut self.external {
            p.len += input.len();
        }
        self.started.get_or_insert_with(Instant::now);
        Some(input)
    }

    #[cfg_attr(not(all(target_arch = "wasm32", feature = "webgpu")), allow(dead_code))]
    /// The logits after the input [`Generator::next_input`] gave, run on a caller's device, or
    /// the error that pass met: sample, detokenize, check stops and queue the chunks.
    pub(crate) fn take_device_logits(&mut self, logits: Result<Vec<f32>>) {
        if let Err(e) = logits.and_then(|logits| self.take_logits(&logits)) {
            self.outbox.clear();
            self.fail(e);
        }
    }

    #[cfg_attr(not(all(target_arch = "wasm32", feature = "webgpu")), allow(dead_code))]
    /// The next queued chunk, without running anything (for a caller that drives the forward
    /// passes itself); `None` when none is queued.
    pub(crate) fn queued_chunk(&mut self) -> Option<Chunk> {
        self.outbox.pop_front()
    }

    #[cfg_attr(not(all(target_arch = "wasm32", feature = "webgpu")), allow(dead_code))]
    /// Whether the generation has queued its last chunk.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    /// Sample → detokenize → stop check, from the logits after the last input token.
    fn take_logits(&mut self, logits: &[f32]) -> Result<()> {
        // Sample (among the tokens the grammar allows, when there is one).
        let tokenizer = self.model.tokenizer();
        let token = match &mut self.grammar {
            None => self.sampler.sample(logits, &self.history),
            Some(grammar) => {
                let mut filter = grammar.filter(tokenizer, self.model.grammar_vocabulary());
                match self.sampler.sample_allowed(logits, &self.history, |id| filter.allows(id)) {
                    Some(token) => token,
                    None => return Err(Error::GrammarDeadEnd { text: format!("{}{}", self.text, self.held) }),
                }
            }
        };
        self.history.push(token);
        self.completion_tokens += 1;
        self.first_token.get_or_insert_with(Instant::now);
        if tokenizer.is_end_of_generation(token) {
            return self.finish(FinishReason::Stop, None);
        }
        if let Some(grammar) = &mut self.grammar {
            grammar.accept(tokenizer.token_bytes(token, true)?)?;
        }

        // Detokenize: only complete UTF-8 characters leave the byte buffer. Control tokens are
        // dropped, except those that spell tool-call markup, which the parser needs.
        self.partial.extend_from_slice(tokenizer.token_bytes(token, self.markup_tokens.contains(&token))?);
        let complete = take_complete_utf8(&mut self.partial);
        self.held.push_str(&complete);

        // Stop strings: end at the first one; hold back what could still become one.
        if let Some((at, stop)) = find_stop(&self.held, &self.options.stop) {
            let stop = stop.to_string();
            self.held.truncate(at);
            self.partial.clear();
            return self.finish(FinishReason::Stop, Some(stop));
        }
        if self.completion_tokens >= self.options.max_tokens {
            return self.finish(FinishReason::Length, None);
        }
        let keep = held_back(&self.held, &self.options.stop);
        let ready: String = self.held.drain(..self.held.len() - keep).collect();
        self.emit(ready);
        Ok(())
    }

    /// Queues text that is past the stop-string check: through the tool-call parser when tools
    /// are offered, so that a call's markup never becomes `Text`.
    fn emit(&mut self, text: String) {
        match &mut self.tool_parser {
            Some(parser) => {
                let parsed = parser.push(&text);
                self.deliver(parsed);
            }
            None => self.emit_text(text),
        }
    }

    fn emit_text(&mut self, text: String) {
        if !text.is_empty() {
            self.text.push_str(&text);
            self.outbox.push_back(Chunk::Text { text });
        }
    }

    fn deliver(&mut self, parsed: Vec<Parsed>) {
        for p in parsed {
            match p {
                Parsed::Text(text) => self.emit_text(text),
                Parsed::Call { id, name, arguments } => {
                    let id = id.unwrap_or_else(|| format!("call_{}", self.first_call + self.calls.len()));
                    self.calls.push(ToolCall::new(id.clone(), name.clone(), arguments.clone()));
                    self.outbox.push_back(Chunk::ToolCall { id, name, arguments });
                }
            }
        }
    }

    /// Flushes what was held back and queues the completion.
    fn finish(&mut self, reason: FinishReason, stop: Option<String>) -> Result<()> {
        let mut rest = std::mem::take(&mut self.held);
        rest.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.partial)));
        self.emit(rest);
        if let Some(parser) = &mut self.tool_parser {
            let parsed = parser.finish();
            self.deliver(parsed);
        }
        let reason = if reason == FinishReason::Stop && !self.calls.is_empty() { FinishReason::ToolCalls } else { reason };
        self.go_home(Some(Message::assistant_calls(self.text.clone(), self.calls.clone())));
        self.outbox.push_back(Chunk::Complete { text: self.text.clone(), finish_reason: reason, stop, usage: self.usage() });
        self.finished = true;
        Ok(())
    }

    fn usage(&self) -> Usage {
        let per_second = |n: usize, from: Option<Instant>, to: Instant| match from {
            Some(from) if n > 0 => n as f64 / (to - from).as_secs_f64().max(1e-9),
            _ => 0.0,
        };
        let now = Instant::now();
        let ttft = match (self.started, self.first_token) {
            (Some(s), Some(f)) => (f - s).as_secs_f64() * 1000.0,
            _ => 0.0,
        };
        Usage {
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            completion_tokens: self.completion_tokens,
            time_to_first_token_ms: ttft,
            prefill_tokens_per_second: self.first_token.map_or(0.0, |f| per_second(self.prompt_tokens - self.cached_tokens, self.started, f)),
            decode_tokens_per_second: per_second(self.completion_tokens.saturating_sub(1), self.first_token, now),
        }
    }
}

impl Drop for Generator {
    /// A turn dropped before its end (its stream dropped) still gives the session its cache.
    fn drop(&mut self) {
        self.go_home(None);
    }
}

/// The control tokens of `model` that spell `format`'s markup (Kimi K2's section tokens), which
/// decoding would otherwise drop.
fn markup_token_ids(model: &Model, format: ToolFormat) -> Vec<u32> {
    let tokenizer = model.tokenizer();
    format
        .markup_tokens()
        .iter()
        .filter_map(|text| match tokenizer.encode(text, false, true).ok()?.as_slice() {
            [id] => Some(*id),
            _ => None,
        })
        .collect()
}

impl Iterator for Generator {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        self.next_chunk()
    }
}

/// Removes and returns the longest prefix of `bytes` that is complete UTF-8; bytes that can
/// never become a character become U+FFFD.
fn take_complete_utf8(bytes: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                bytes.clear();
                return out;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[..valid]).unwrap_or_default());
                match e.error_len() {
                    // An invalid sequence: replace it and go on.
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        bytes.drain(..valid + bad);
                    }
                    // An incomplete character at the end: wait for more bytes.
                    None => {
                        bytes.drain(..valid);
                        return out;
                    }
                }
            }
        }
    }
}

/// The earliest stop string in `text`: its byte offset and the string.
fn find_stop<'s>(text: &str, stops: &'s [String]) -> Option<(usize, &'s str)> {
    stops.iter().filter_map(|s| text.find(s.as_str()).map(|at| (at, s.as_str()))).min_by_key(|&(at, s)| (at, std::cmp::Reverse(s.len())))
}

/// How many bytes at the end of `text` could be the beginning of a stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| (1..s.len()).rev().filter(|&k| s.is_char_boundary(k) && text.ends_with(&s[..k])).take(1))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_released_whole() {
        let mut buf = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_complete_utf8(&mut buf), "");
        buf.push("é".as_bytes()[1]);
        buf.extend_from_slice(&"😀".as_bytes()[..2]);
        assert_eq!(take_complete_utf8(&mut buf), "é");
        buf.extend_from_slice(&"😀".as_bytes()[2..]);
        assert_eq!(take_complete_utf8(&mut buf), "😀");
        let mut bad = vec![b'a', 0xFF, b'b'];
        assert_eq!(take_complete_utf8(&mut bad), "a\u{FFFD}b");
    }

    #[test]
    fn stop_strings_are_found_and_held_back() {
        let stops = vec!["</answer>".to_string(), "\n\n".to_string()];
        assert_eq!(find_stop("x</answer>y", &stops), Some((1, "</answer>")));
        assert_eq!(find_stop("a\n\nb</answer>", &stops), Some((1, "\n\n")));
        assert_eq!(find_stop("nothing", &stops), None);
        assert_eq!(held_back("text </ans", &stops), 5);
        assert_eq!(held_back("text\n", &stops), 1);
        assert_eq!(held_back("text", &stops), 0);
        assert_eq!(held_back("ends with <", &["<é>".to_string()]), 1);
    }
}
