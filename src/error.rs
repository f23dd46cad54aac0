//! The one error type of the crate.

/// Everything that can go wrong in candlewick, each with the facts a user needs to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the model file or stream failed for a reason outside the file's contents.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// The file ended before a part the header promised (the file is truncated).
    #[error("the GGUF file is truncated: it ends while reading {what}")]
    Truncated {
        /// What was being read when the data ran out.
        what: String,
    },

    /// The first four bytes are not `GGUF`: this is not a GGUF file.
    #[error("not a GGUF file: the first bytes are {found:?}, expected \"GGUF\"")]
    BadMagic {
        /// The bytes found where the magic should be.
        found: [u8; 4],
    },

    /// The GGUF version is one this crate does not read (it reads versions 2 and 3).
    #[error("unsupported GGUF version {version} (candlewick reads versions 2 and 3)")]
    UnsupportedVersion {
        /// The version the file declares.
        version: u32,
    },

    /// The file is structurally invalid: an impossible count, length, type or offset.
    #[error("corrupt GGUF file: {reason}")]
    Corrupt {
        /// What is wrong, in words.
        reason: String,
    },

    /// A metadata key the model needs is absent.
    #[error("missing GGUF metadata key `{key}`")]
    MissingMetadata {
        /// The absent key.
        key: String,
    },

    /// A metadata key holds a value of the wrong type.
    #[error("GGUF metadata key `{key}` has type {found}, expected {expected}")]
    MetadataType {
        /// The key.
        key: String,
        /// The type the reader needed.
        expected: &'static str,
        /// The type found in the file.
        found: &'static str,
    },

    /// A metadata key holds a value of the right type that makes no sense.
    #[error("GGUF metadata key `{key}` is invalid: {reason}")]
    InvalidMetadata {
        /// The key.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },

    /// The file's `tokenizer.ggml.model` names a tokenizer family this crate does not build.
    #[error("unsupported tokenizer model `{model}` (supported: {supported})")]
    UnsupportedTokenizer {
        /// The value of `tokenizer.ggml.model`.
        model: String,
        /// The supported values, comma separated.
        supported: String,
    },

    /// The file's `tokenizer.ggml.pre` is absent or names a pre-tokenizer this crate does not know.
    /// A wrong pre-tokenizer silently degrades output, so there is no default.
    #[error("unknown pre-tokenizer `{pre}` in `tokenizer.ggml.pre` (known: {known})")]
    UnknownPreTokenizer {
        /// The value found (`<missing>` when the key is absent).
        pre: String,
        /// The known values, comma separated.
        known: String,
    },

    /// Building or running a tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// A token id is not in the vocabulary.
    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens ({what})")]
    TokenOutOfRange {
        /// The offending id.
        id: i64,
        /// The vocabulary size.
        vocab_size: usize,
        /// Where the id came from.
        what: String,
    },

    /// The model has no `tokenizer.chat_template`, so chat messages cannot be rendered.
    #[error("this model has no chat template (`tokenizer.chat_template`); pass a raw prompt instead")]
    NoChatTemplate,

    /// The chat template failed to compile or render.
    #[error("chat template error: {message}")]
    Template {
        /// What the template engine reported.
        message: String,
    },

    /// Chat messages given by the caller are malformed.
    #[error("invalid chat messages: {reason}")]
    InvalidMessages {
        /// What is wrong.
        reason: String,
    },

    /// Tool definitions given by the caller are malformed.
    #[error("invalid tools: {reason}")]
    InvalidTools {
        /// What is wrong, naming the tool.
        reason: String,
    },

    /// A session was asked to change or start a turn while one of its turns is still running.
    #[error("this session's turn is still running: finish, cancel or drop it first")]
    SessionBusy,

    /// Bytes given to restore a session are not a saved session of this model.
    #[error("cannot restore the session: {reason}")]
    InvalidSession {
        /// What does not fit.
        reason: String,
    },

    /// The file's `general.architecture` is not one this crate runs.
    #[error("unsupported architecture `{name}` (supported: {supported})")]
    UnsupportedArchitecture {
        /// The architecture the file declares.
        name: String,
        /// The supported architectures, comma separated.
        supported: String,
    },

    /// A tensor the architecture needs is not in the file.
    #[error("missing tensor `{name}`")]
    MissingTensor {
        /// The tensor's name, e.g. `blk.0.attn_q.weight`.
        name: String,
    },

    /// A tensor has a shape or type the architecture cannot use.
    #[error("tensor `{name}`: {reason}")]
    InvalidTensor {
        /// The tensor's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A tensor computation failed: a type without a kernel, or shapes that do not fit.
    #[error("tensor computation failed: {0}")]
    Compute(String),

    /// The model was opened without its weights (for tokenizing only), so it cannot generate.
    #[error("this model was opened without its weights; open it with `Model::open` to generate")]
    WeightsNotLoaded,

    /// The prompt does not fit in the context window.
    #[error("the prompt is {tokens} tokens long but the context holds {context}")]
    PromptTooLong {
        /// The prompt's length in tokens.
        tokens: usize,
        /// The context length.
        context: usize,
    },

    /// The GPU could not be used: no adapter, a limit too small for a matrix, a shader or
    /// buffer the device refused, a lost device, or a result that could not be read back.
    #[error("GPU: {0}")]
    Gpu(String),

    /// A caller-supplied parameter is out of range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// What is wrong with its value.
        reason: String,
    },

    /// The model does not fit in the memory it would be read into, so loading it would end in
    /// an out-of-memory kill (natively, a model read rather than memory-mapped) or a failed
    /// allocation (WebAssembly's 4 GiB memory). Nothing was allocated.
    #[error("the model is {:.2} GiB, more than the {:.2} GiB {where_} can hold{}", *.bytes as f64 / GIB, *.limit as f64 / GIB, .hint)]
    ModelTooLarge {
        /// The model's size in bytes.
        bytes: u64,
        /// The memory it would have to fit in, in bytes.
        limit: u64,
        /// Which memory: `"this machine's available memory"`, `"WebAssembly's memory"`.
        where_: &'static str,
        /// What to do instead, starting with "; " (or empty).
        hint: &'static str,
    },

    /// A GBNF grammar does not parse or cannot be run.
    #[error("grammar error at line {line}, column {column}: {message}")]
    Grammar {
        /// The line of the problem (1-based).
        line: usize,
        /// The column of the problem (1-based, in characters).
        column: usize,
        /// What is wrong.
        message: String,
    },

    /// A JSON Schema is invalid or uses a feature the grammar converter does not support.
    #[error("JSON Schema error at {pointer}: {message}")]
    JsonSchema {
        /// The JSON pointer of the offending part (`#/properties/name/pattern`).
        pointer: String,
        /// What is wrong.
        message: String,
    },

    /// Text was fed to a grammar state that its grammar does not allow at that point.
    #[error("the grammar does not allow {text:?} here")]
    GrammarRejected {
        /// The text (a token's) that was refused.
        text: String,
    },

    /// Under the grammar, no token of the vocabulary can come next, so generation cannot go on
    /// (the grammar needs characters no token spells, or the model cannot end where it must).
    #[error("the grammar allows none of the model's tokens after {text:?}")]
    GrammarDeadEnd {
        /// The text generated so far.
        text: String,
    },

    /// The KV cache for the context asked for cannot be allocated: its size overflows this
    /// target's addresses, it is larger than the memory available (natively), or the memory is
    /// not there (WebAssembly's 4 GiB). Nothing was kept.
    #[error("a KV cache of {positions} positions ({:.2} GiB) does not fit in memory; ask for a shorter context length", *.bytes as f64 / GIB)]
    KvCacheTooLarge {
        /// The positions asked for.
        positions: usize,
        /// The bytes it needs (saturated at `u64::MAX`).
        bytes: u64,
    },

    /// A saved perplexity run (`--kl-divergence`) cannot be compared with this one: it is not
    /// a saved run, or it scored other tokens or another context.
    #[error("the saved run cannot be compared with this one: {reason}")]
    BaseRunMismatch {
        /// What differs or is malformed.
        reason: String,
    },

    /// Something is wrong in one shard of a split model.
    #[error("shard {} of {count}: {error}", .shard + 1)]
    InShard {
        /// The shard (0-based).
        shard: usize,
        /// The shards of the model.
        count: usize,
        /// What is wrong in it.
        error: Box<Error>,
    },
}

const GIB: f64 = (1u64 << 30) as f64;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
