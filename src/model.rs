//! A loaded model: its GGUF header, tokenizer and chat template, the same on every target.

use std::io::{Cursor, Read, Seek};
use std::sync::Arc;

use crate::grammar::Vocabulary;

use serde::Serialize;

use crate::arch::Weights;
use crate::bytes::Bytes;
use crate::chat::{self, ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::generator::{GenerateOptions, Generator, Prompt};
use crate::gguf::Gguf;
use crate::tokenizer::Tokenizer;
use crate::tools::Tool;

/// The metadata a model's tokenizer is built from and then holds in its own form. A model does
/// not keep them in its [`Model::gguf`] header: as metadata values they would be a second copy
/// of the vocabulary, 8 MiB for SmolLM2's 49,152 tokens and 24 MiB for Qwen2.5's 151,936.
pub const TOKENIZER_ARRAYS: [&str; 4] = ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores"];

/// A model read from a GGUF file: header, tokenizer and weights. Cloning is cheap and shares
/// everything; each generation has its own KV cache, so clones can generate concurrently.
#[derive(Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

struct Inner {
    gguf: Gguf,
    tokenizer: Tokenizer,
    /// `None` when opened for tokenizing only.
    weights: Option<Weights>,
    /// The token texts sorted for grammars, built on first use.
    grammar_vocabulary: std::sync::OnceLock<Vocabulary>,
}

/// What `candlewick info` prints: the facts about a model a user asks first.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// `general.architecture`, e.g. `llama`, `qwen2`, `gemma3`.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// The context length the model was trained for (`<arch>.context_length`).
    pub context_length: Option<u64>,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece-style).
    pub tokenizer_model: String,
    /// `tokenizer.ggml.pre`, the pre-tokenizer of a `gpt2` tokenizer.
    pub tokenizer_pre: Option<String>,
    /// The beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// Whether a BOS token is put before a prompt.
    pub add_bos_token: bool,
    /// The tokens that end generation.
    pub end_of_generation_ids: Vec<u32>,
    /// Whether the file carries a chat template.
    pub has_chat_template: bool,
    /// Number of tensors.
    pub tensor_count: usize,
}

/// The tokenizer built from `gguf` (or from a tokenizer.json), and the header without the
/// arrays the tokenizer now holds. Building a tokenizer leaves megabytes of small freed
/// allocations behind; they go back to the system before the weights are read.
fn header_and_tokenizer(mut gguf: Gguf, tokenizer_json: Option<&[u8]>) -> Result<(Gguf, Tokenizer)> {
    let tokenizer = match tokenizer_json {
        Some(json) => Tokenizer::from_json(json, &gguf)?,
        None => Tokenizer::from_gguf(&gguf)?,
    };
    gguf.metadata.retain(|key, _| !TOKENIZER_ARRAYS.contains(&key.as_str()));
    crate::platform::return_freed_memory();
    Ok((gguf, tokenizer))
}

/// Refuses a source larger than the memory available to read it into.
fn check_fits<R: Seek>(reader: &mut R) -> Result<()> {
    let start = reader.stream_position()?;
    let len = reader.seek(std::io::SeekFrom::End(0))?;
    reader.seek(std::io::SeekFrom::Start(start))?;
    match crate::platform::available_memory() {
        Some(free) if len.saturating_sub(start) > free => Err(Error::ModelTooLarge {
            bytes: len - start,
            limit: free,
            where_: "this machine's available memory",
            hint: "; open the file with `Model::open`, which memory-maps it instead of reading it",
        }),
        _ => Ok(()),
    }
}

/// An empty conversation has nothing to answer.
fn refuse_empty(messages: &[Message]) -> Result<()> {
    match messages.is_empty() {
        true => Err(Error::InvalidMessages { reason: "there are no messages: a conversation needs at least one to answer".into() }),
        false => Ok(()),
    }
}

impl Model {
    /// Reads a whole model — header, tokenizer, weights — from any seekable byte source.
    /// The weights are read into memory (unlike [`Model::open`], which maps the file), so a
    /// source larger than the memory available is refused before anything is read.
    ///
    /// # Errors
    /// Any [`Error`] from reading the GGUF header, building the tokenizer, or loading the
    /// weights (an unsupported architecture, a missing tensor, truncated data);
    /// [`Error::ModelTooLarge`] when the source is larger than the available memory.
    pub fn read<R: Read + Seek>(reader: &mut R) -> Result<Model> {
        check_fits(reader)?;
        let (gguf, tokenizer) = header_and_tokenizer(Gguf::read(reader)?, None)?;
        let weights = Weights::load(&gguf, reader)?;
        Ok(Model::from_parts(gguf, tokenizer, Some(weights)))
    }

    /// Reads a whole model from the bytes of a GGUF file in memory. The weights share `file`'s
    /// buffer rather than copy it, so the model costs little more than the file itself — except
    /// natively on CPUs with AVX-512 VNNI, where the kernels repack matrices at load time and the
    /// buffer is then kept beside the repacked copy.
    ///
    /// # Errors
    /// As [`Model::read`].
    pub fn from_bytes(file: impl Into<Bytes>) -> Result<Model> {
        Model::from_bytes_with_progress(file, |_, _| {})
    }

    /// As [`Model::from_bytes`], calling `progress(bytes, total)` as the weights are placed.
    ///
    /// # Errors
    /// As [`Model::read`].
    pub fn from_bytes_with_progress(file: impl Into<Bytes>, progress: impl FnMut(u64, u64)) -> Result<Model> {
        let file = file.into();
        let header = Gguf::read(&mut Cursor::new(&file[..]))?;
        Model::from_files_with_progress(header, vec![file], progress)
    }

    /// Reads a whole model from the bytes of its GGUF files in memory (or memory-mapped): the
    /// one file of most models, or every shard of a split model in order (`split.no` 0 first).
    /// `first` is the header of `files[0]`, already read. The weights share the files'
    /// buffers rather than copy them (see [`Weights::load_from_files`]).
    ///
    /// # Errors
    /// As [`Model::read`]; [`Error::InShard`] for a later shard that is not a well-formed GGUF
    /// file, and [`Error::InvalidMetadata`] when the shards do not belong together.
    pub fn from_files_with_progress(first: Gguf, files: Vec<Bytes>, mut progress: impl FnMut(u64, u64)) -> Result<Model> {
        let mut offsets = vec![first.data_offset];
        let header = match first.split()? {
            None => first,
            Some((_, count, _)) => {
                let mut shards = vec![first];
                for (shard, file) in files.iter().enumerate().skip(1) {
                    let header = Gguf::read(&mut Cursor::new(&file[..])).map_err(|e| Error::InShard { shard, count, error: Box::new(e) })?;
                    offsets.push(header.data_offset);
                    shards.push(header);
                }
                Gguf::join_split(shards)?
            }
        };
        let (gguf, tokenizer) = header_and_tokenizer(header, None)?;
        let files: Vec<(Bytes, u64)> = files.into_iter().zip(offsets).collect();
        let weights = Weights::load_from_files(&gguf, &files, &mut progress)?;
        Ok(Model::from_parts(gguf, tokenizer, Some(weights)))
    }

    /// Reads the header and builds the tokenizer only: enough to tokenize, render chat
    /// templates and describe the model, for any architecture, without the cost of the weights.
    ///
    /// # Errors
    /// Any [`Error`] from reading the GGUF header or building the tokenizer.
    pub fn read_without_weights<R: Read + Seek>(reader: &mut R) -> Result<Model> {
        let (gguf, tokenizer) = header_and_tokenizer(Gguf::read(reader)?, None)?;
        Ok(Model::from_parts(gguf, tokenizer, None))
    }

    /// As [`Model::read`], but with a Hugging Face tokenizer.json that takes precedence over
    /// the file's own tokenizer.
    ///
    /// # Errors
    /// Any [`Error`] from reading the GGUF header, building the tokenizer or loading weights;
    /// [`Error::ModelTooLarge`] as [`Model::read`].
    pub fn read_with_tokenizer_json<R: Read + Seek>(reader: &mut R, tokenizer_json: &[u8], with_weights: bool) -> Result<Model> {
        if with_weights {
            check_fits(reader)?;
        }
        let (gguf, tokenizer) = header_and_tokenizer(Gguf::read(reader)?, Some(tokenizer_json))?;
        let weights = if with_weights { Some(Weights::load(&gguf, reader)?) } else { None };
        Ok(Model::from_parts(gguf, tokenizer, weights))
    }

    fn from_parts(gguf: Gguf, tokenizer: Tokenizer, weights: Option<Weights>) -> Model {
        Model { inner: Arc::new(Inner { gguf, tokenizer, weights, grammar_vocabulary: std::sync::OnceLock::new() }) }
    }

    /// The parsed GGUF header, without the vocabulary's arrays ([`TOKENIZER_ARRAYS`]), which
    /// [`Model::tokenizer`] holds in its own form (read the file with [`Gguf::read`] for them).
    pub fn gguf(&self) -> &Gguf {
        &self.inner.gguf
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// The model's weights.
    ///
    /// # Errors
    /// [`Error::WeightsNotLoaded`] for a model read without them.
    pub fn weights(&self) -> Result<&Weights> {
        self.inner.weights.as_ref().ok_or(Error::WeightsNotLoaded)
    }

    /// The vocabulary indexed for grammar-constrained sampling (built on first use, a few tens
    /// of milliseconds for 150,000 tokens, then shared by every generation).
    pub fn grammar_vocabulary(&self) -> &Vocabulary {
        self.inner.grammar_vocabulary.get_or_init(|| Vocabulary::from_tokenizer(&self.inner.tokenizer))
    }

    /// Prepares a generation, driven step by step with [`Generator::next_chunk`].
    ///
    /// # Errors
    /// As [`Generator::new`].
    pub fn generator(&self, prompt: impl Into<Prompt>, options: GenerateOptions) -> Result<Generator> {
        Generator::new(self, prompt.into(), options)
    }

    /// The model's chat template.
    ///
    /// # Errors
    /// [`Error::NoChatTemplate`] when the file has none; [`Error::Template`] when it does not
    /// compile.
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        ChatTemplate::from_gguf(self.gguf(), self.tokenizer())
    }

    /// Renders `messages` with the model's chat template, ending with the assistant's header.
    /// A conversation that ends with an assistant message gets a new assistant turn after it
    /// (the model answers again; it does not continue that message).
    ///
    /// # Errors
    /// [`Error::InvalidMessages`] for an empty list (there is nothing to answer); as
    /// [`Model::chat_template`] and [`ChatTemplate::render`].
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        self.render_chat_with_tools(messages, &[])
    }

    /// As [`Model::render_chat`], offering `tools` to the template (see
    /// [`ChatTemplate::render_with_tools`]).
    ///
    /// # Errors
    /// As [`Model::render_chat`].
    pub fn render_chat_with_tools(&self, messages: &[Message], tools: &[Tool]) -> Result<String> {
        refuse_empty(messages)?;
        self.chat_template()?.render_with_tools(messages, tools, true)
    }

    /// The prompt tokens for `messages`: rendered, tokenized with special tokens recognised,
    /// and BOS first exactly once when the model wants it.
    ///
    /// # Errors
    /// As [`Model::render_chat`] (an empty list is refused) and [`Tokenizer::encode`].
    pub fn chat_tokens(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.chat_tokens_with_tools(messages, &[])
    }

    /// As [`Model::chat_tokens`], offering `tools` to the template (see
    /// [`ChatTemplate::render_with_tools`]).
    ///
    /// # Errors
    /// As [`Model::chat_tokens`].
    pub fn chat_tokens_with_tools(&self, messages: &[Message], tools: &[Tool]) -> Result<Vec<u32>> {
        let rendered = self.render_chat_with_tools(messages, tools)?;
        chat::tokenize_rendered(self.tokenizer(), &rendered)
    }

    /// The facts `candlewick info` prints.
    ///
    /// # Errors
    /// [`Error::MissingMetadata`] / [`Error::MetadataType`] for a missing or mistyped
    /// `general.architecture` and mistyped optional keys.
    pub fn info(&self) -> Result<ModelInfo> {
        let g = self.gguf();
        let tokenizer = self.tokenizer();
        let architecture = g.architecture()?.to_string();
        Ok(ModelInfo {
            context_length: g.opt_u64(&format!("{architecture}.context_length"))?,
            name: g.opt_str("general.name")?.map(str::to_owned),
            vocab_size: tokenizer.vocab_size(),
            tokenizer_model: g.str("tokenizer.ggml.model")?.to_string(),
            tokenizer_pre: g.opt_str("tokenizer.ggml.pre")?.map(str::to_owned),
            bos_token_id: tokenizer.bos(),
            add_bos_token: tokenizer.adds_bos(),
            end_of_generation_ids: tokenizer.end_of_generation().to_vec(),
            has_chat_template: g.get("tokenizer.chat_template").is_some(),
            tensor_count: g.tensors.len(),
            architecture,
        })
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("tensors", &self.gguf().tensors.len())
            .field("vocab_size", &self.tokenizer().vocab_size())
            .field("weights", &self.inner.weights.is_some())
            .finish()
    }
}

#[allow(dead_code)]
fn _assert_error_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Error>();
}
