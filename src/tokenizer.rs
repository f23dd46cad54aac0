//! The tokenizer, built from a GGUF file's `tokenizer.ggml.*` metadata (or from a
//! tokenizer.json the caller supplies), tokenizing exactly as llama.cpp does for the same file.
//!
//! Two families come from GGUF metadata:
//! - `gpt2`: byte-level BPE. The text is split by the regexes of the file's pre-tokenizer
//!   (`tokenizer.ggml.pre`, see [`PRE_TOKENIZERS`]), bytes are mapped to the GPT-2 byte
//!   alphabet, then merged by rank. The `tokenizers` crate does the splitting and merging.
//! - `llama`: SentencePiece-style. Spaces become `▁`, then the adjacent pair whose joined text
//!   is a vocabulary token with the highest score is merged until none is left; characters no
//!   token covers fall back to `<0xXX>` byte tokens.
//!
//! In both, special-token text is split off first, longest token first, as llama.cpp does:
//! user-defined tokens always, control tokens only when the caller asks to parse specials.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::AhoCorasick;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{DecoderWrapper, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer as _, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// What kind of token a vocabulary entry is (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Ordinary text.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control token such as `<|im_start|>`: parsed from text only on request, not rendered
    /// when decoding unless asked.
    Control,
    /// A user-defined token: always split off from text, always rendered.
    UserDefined,
    /// A reserved, unused slot.
    Unused,
    /// A byte-fallback token `<0xXX>`.
    Byte,
}

impl TokenType {
    fn from_gguf(code: i128) -> Option<TokenType> {
        Some(match code {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

/// The split rules of a gpt2-style pre-tokenizer: regexes applied in turn (each match and each
/// gap between matches becomes its own piece), and whether a piece that is already a whole
/// vocabulary token skips merging.
#[derive(Debug, Clone, Copy)]
pub struct PreTokenizer {
    /// The regexes, applied one after the other.
    pub regexes: &'static [&'static str],
    /// Whether a piece found whole in the vocabulary is taken without merging.
    pub ignore_merges: bool,
}

/// GPT-2's split: contractions, optionally-spaced letter / digit / other runs, whitespace.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split: case-insensitive contractions, letters with one leading non-letter, digits
/// in groups of up to three, punctuation runs with trailing newlines, newline runs, spaces.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's split: Llama 3's with every digit on its own.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// DeepSeek-V3's split: digit groups of up to three, runs of CJK ideographs and kana, then
/// letters (with marks) optionally led by one symbol, punctuation runs, newlines, spaces.
const DEEPSEEK_V3_REGEXES: &[&str] = &[
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\x22#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
/// Kimi K2's split (its tiktoken pattern): Han runs on their own; words split at case changes
/// (excluding Han) with optional contractions; digit groups of up to three; punctuation runs;
/// newlines; spaces.
const KIMI_K2_REGEX: &str = r"[\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Which `tokenizer.ggml.pre` values use which split rules (the values llama.cpp's converter
/// writes). A value not in this table is an error, never a silent default.
pub const PRE_TOKENIZERS: &[(&[&str], PreTokenizer)] = &[
    (
        &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"],
        PreTokenizer { regexes: &[LLAMA3_REGEX], ignore_merges: true },
    ),
    (&["qwen2", "deepseek-r1-qwen"], PreTokenizer { regexes: &[QWEN2_REGEX], ignore_merges: false }),
    (
        &["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"],
        PreTokenizer { regexes: &[r"\p{N}", GPT2_REGEX], ignore_merges: false },
    ),
    (&["deepseek-v3"], PreTokenizer { regexes: DEEPSEEK_V3_REGEXES, ignore_merges: false }),
    (&["kimi-k2"], PreTokenizer { regexes: &[KIMI_K2_REGEX], ignore_merges: true }),
    (
        &["gpt-2", "phi-2", "olmo", "mpt", "jina-es", "jina-de", "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code", "roberta-bpe", "gigachat"],
        PreTokenizer { regexes: &[GPT2_REGEX], ignore_merges: false },
    ),
];

/// The split rules for a `tokenizer.ggml.pre` value.
///
/// # Errors
/// [`Error::UnknownPreTokenizer`] naming the value and the known ones.
pub fn pre_tokenizer(pre: &str) -> Result<PreTokenizer> {
    PRE_TOKENIZERS.iter().find(|(names, _)| names.contains(&pre)).map(|(_, rule)| *rule).ok_or_else(|| Error::UnknownPreTokenizer {
        pre: pre.to_string(),
        known: PRE_TOKENIZERS.iter().flat_map(|(names, _)| names.iter().copied()).collect::<Vec<_>>().join(", "),
    })
}

/// Token texts that end a turn or a document (REFERENCE §4, the list llama.cpp 3.21.1's build
/// uses). A vocabulary token with one of these texts joins the end-of-generation set and, as
/// llama.cpp makes it, becomes a control token whatever its type in the file: its text is split
/// off only when special tokens are parsed, and it is not rendered when decoding. In Qwen 2.5's
/// vocabulary `</s>` is ordinary text, so the model stops (as llama.cpp does) if it ever writes
/// that token; its text `</s>` written in smaller pieces is unaffected.
const END_OF_GENERATION_TEXTS: &[&str] =
    &["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>", "<eos>", "</s>"];

/// A tokenizer for one model.
pub struct Tokenizer {
    /// Token text by id (UTF-8).
    texts: Table,
    /// Token type by id.
    types: Vec<TokenType>,
    /// The bytes a token stands for when decoded (control tokens: their text).
    pieces: Table,
    engine: Engine,
    specials: Specials,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// Sorted, deduplicated end-of-generation ids.
    end_of_generation: Vec<u32>,
    /// SentencePiece-style: a space was put before the text when encoding, so decoding drops it.
    strip_leading_space: bool,
}

enum Engine {
    /// Built from GGUF metadata; runs on the text between special tokens.
    Gguf(Pieces),
    /// A user-supplied tokenizer.json, which handles its own special tokens: one copy that
    /// parses special-token text and one that encodes it as plain text.
    Json { special: Box<tokenizers::Tokenizer>, plain: Box<tokenizers::Tokenizer> },
}

/// What tokenizes the text between special tokens.
enum Pieces {
    /// gpt2 byte-level BPE.
    Bpe(Box<Bpe>),
    /// llama / SentencePiece-style.
    Spm(Box<Spm>),
}

struct Spm {
    by_text: HashMap<String, u32>,
    scores: Vec<f32>,
    /// The `<0xXX>` token of each byte.
    byte_tokens: [Option<u32>; 256],
    unknown: Option<u32>,
    add_space_prefix: bool,
}

/// The tokens split off from text before the tokenizer proper runs.
struct Specials {
    /// Control, user-defined and unknown token ids, longest text first.
    ids: Vec<u32>,
    /// Matches `ids`' texts; pattern `i` is `ids[i]`.
    matcher: Option<AhoCorasick>,
}

/// A piece of the input after special tokens are split off.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// # Errors
    /// [`Error::MissingMetadata`] / [`Error::MetadataType`] for absent or mistyped keys,
    /// [`Error::UnsupportedTokenizer`] for a `tokenizer.ggml.model` other than `gpt2` or
    /// `llama`, [`Error::UnknownPreTokenizer`] for a missing or unknown `tokenizer.ggml.pre`,
    /// [`Error::TokenOutOfRange`] for special-token ids outside the vocabulary, and
    /// [`Error::InvalidMetadata`] for a merge of tokens that are not in the vocabulary.
    pub fn from_gguf(gguf: &Gguf) -> Result<Tokenizer> {
        let model = gguf.str("tokenizer.ggml.model")?;
        let texts = gguf.str_array("tokenizer.ggml.tokens")?;
        if texts.is_empty() {
            return Err(Error::InvalidMetadata { key: "tokenizer.ggml.tokens".into(), reason: "the vocabulary is empty".into() });
        }
        let n = texts.len();
        let mut types = match gguf.get("tokenizer.ggml.token_type") {
            None => vec![TokenType::Normal; n],
            Some(_) => {
                let codes = gguf.int_array("tokenizer.ggml.token_type")?;
                if codes.len() != n {
                    return Err(Error::InvalidMetadata {
                        key: "tokenizer.ggml.token_type".into(),
                        reason: format!("{} entries for {n} tokens", codes.len()),
                    });
                }
                codes
                    .into_iter()
                    .map(|c| {
                        TokenType::from_gguf(c).ok_or_else(|| Error::InvalidMetadata {
                            key: "tokenizer.ggml.token_type".into(),
                            reason: format!("unknown token type {c}"),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let end_of_generation = end_of_generation_set(gguf, &texts, &mut types)?;

        let (engine, add_bos_default, pieces, strip_leading_space) = match model {
            "gpt2" => {
                let pre = gguf.opt_str("tokenizer.ggml.pre")?.ok_or_else(|| Error::UnknownPreTokenizer {
                    pre: "<missing>".into(),
                    known: PRE_TOKENIZERS.iter().flat_map(|(names, _)| names.iter().copied()).collect::<Vec<_>>().join(", "),
                })?;
                let rule = pre_tokenizer(pre)?;
                let engine = Engine::Gguf(Pieces::Bpe(Box::new(Bpe::new(&texts, &gguf.str_array("tokenizer.ggml.merges")?, rule)?)));
                let pieces = Table::new(texts.iter().zip(&types).map(|(t, ty)| bpe_piece(t, *ty)));
                (engine, rule.ignore_merges, pieces, false)
            }
            "llama" => {
                let scores = gguf.f64_array("tokenizer.ggml.scores")?;
                if scores.len() != n {
                    return Err(Error::InvalidMetadata {
                        key: "tokenizer.ggml.scores".into(),
                        reason: format!("{} scores for {n} tokens", scores.len()),
                    });
                }
                let add_space_prefix = gguf.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                let spm = Spm::new(&texts, &types, scores, special_id(gguf, "tokenizer.ggml.unknown_token_id", n)?, add_space_prefix);
                let pieces = Table::new(texts.iter().zip(&types).map(|(t, ty)| spm_piece(t, *ty)));
                (Engine::Gguf(Pieces::Spm(Box::new(spm))), true, pieces, add_space_prefix)
            }
            other => {
                return Err(Error::UnsupportedTokenizer { model: other.to_string(), supported: "gpt2, llama".into() });
            }
        };

        Ok(Tokenizer {
            specials: Specials::new(&texts, &types)?,
            bos: special_id(gguf, "tokenizer.ggml.bos_token_id", n)?,
            eos: special_id(gguf, "tokenizer.ggml.eos_token_id", n)?,
            add_bos: gguf.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(add_bos_default),
            add_eos: gguf.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            texts: Table::new(&texts),
            types,
            pieces,
            engine,
            end_of_generation,
            strip_leading_space,
        })
    }

    /// Builds the tokenizer from a Hugging Face tokenizer.json, which takes precedence over
    /// the file's own tokenizer. The GGUF metadata still supplies BOS/EOS ids and the
    /// end-of-generation set.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] when the JSON is not a valid tokenizer, and the metadata errors of
    /// [`Tokenizer::from_gguf`] for special-token ids.
    pub fn from_json(json: &[u8], gguf: &Gguf) -> Result<Tokenizer> {
        let special = tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        let n = special.get_vocab_size(true);
        let mut texts = vec![String::new(); n];
        let mut types = vec![TokenType::Normal; n];
        for (text, id) in special.get_vocab(true) {
            if let Some(slot) = texts.get_mut(id as usize) {
                *slot = text;
            }
        }
        for (id, added) in special.get_added_tokens_decoder() {
            if let Some(ty) = types.get_mut(id as usize) {
                *ty = if added.special { TokenType::Control } else { TokenType::UserDefined };
            }
        }
        let byte_level = matches!(special.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let end_of_generation = end_of_generation_set(gguf, &texts, &mut types)?;
        let pieces = Table::new(texts.iter().zip(&types).map(|(t, ty)| if byte_level { bpe_piece(t, *ty) } else { spm_piece(t, *ty) }));
        Ok(Tokenizer {
            specials: Specials { ids: Vec::new(), matcher: None },
            bos: special_id(gguf, "tokenizer.ggml.bos_token_id", n)?,
            eos: special_id(gguf, "tokenizer.ggml.eos_token_id", n)?,
            add_bos: gguf.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
            add_eos: gguf.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            texts: Table::new(&texts),
            types,
            pieces,
            engine: Engine::Json { special: Box::new(special), plain: Box::new(plain) },
            end_of_generation,
            strip_leading_space: false,
        })
    }

    /// Tokenizes `text`. With `add_special`, BOS/EOS are added as the file's
    /// `add_bos_token` / `add_eos_token` say; with `parse_special`, control-token text such as
    /// `<|im_start|>` becomes that token instead of being tokenized as plain text.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the underlying tokenizer fails (a tokenizer.json that cannot
    /// encode the text).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let pieces = match &self.engine {
            Engine::Gguf(pieces) => pieces,
            Engine::Json { special, plain } => {
                let tok = if parse_special { special } else { plain };
                let enc = tok.encode_fast(text, add_special).map_err(|e| Error::Tokenizer(e.to_string()))?;
                out.extend_from_slice(enc.get_ids());
                return Ok(out);
            }
        };
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        // SentencePiece puts a space before the first text and before text after a special token.
        let mut after_special = true;
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(piece) => {
                    match pieces {
                        Pieces::Bpe(bpe) => bpe.encode(piece, &self.texts, &mut out)?,
                        Pieces::Spm(spm) => spm.encode(piece, after_special, &mut out)?,
                    }
                    after_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// Splits special-token text off `text`, longest token first, as llama.cpp does.
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Text(text)];
        let Some(matcher) = &self.specials.matcher else { return fragments };
        // Only the special tokens that occur somewhere in the text can split it.
        let mut present: Vec<usize> = matcher.find_overlapping_iter(text).map(|m| m.pattern().as_usize()).collect();
        present.sort_unstable();
        present.dedup();
        for index in present {
            let id = self.specials.ids[index];
            let ty = self.types[id as usize];
            if !parse_special && matches!(ty, TokenType::Control | TokenType::Unknown) {
                continue;
            }
            let needle = self.token_text(id).unwrap_or_default();
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(raw) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut rest = 0;
                for (at, _) in raw.match_indices(needle) {
                    if at > rest {
                        next.push(Fragment::Text(&raw[rest..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = at + needle.len();
                }
                if rest < raw.len() {
                    next.push(Fragment::Text(&raw[rest..]));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The bytes token `id` decodes to; control and unknown tokens give their text only when
    /// `special` is set.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32, special: bool) -> Result<&[u8]> {
        let ty = *self.types.get(id as usize).ok_or_else(|| Error::TokenOutOfRange {
            id: id.into(),
            vocab_size: self.texts.len(),
            what: "decoding".into(),
        })?;
        Ok(match ty {
            TokenType::Control | TokenType::Unknown if !special => &[],
            _ => self.pieces.get(id as usize).unwrap_or_default(),
        })
    }

    /// Decodes token ids to text. Invalid UTF-8 (a sequence cut inside a character) becomes
    /// U+FFFD; use [`Tokenizer::token_bytes`] to stream byte-exactly.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32], special: bool) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id, special)?);
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if self.strip_leading_space && text.starts_with(' ') {
            text.remove(0);
        }
        Ok(text)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The text of token `id` as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).and_then(|text| std::str::from_utf8(text).ok())
    }

    /// The type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The beginning-of-sequence token, if the file names one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the file names one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether [`Tokenizer::encode`] with `add_special` puts BOS first.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// The tokens that end generation, sorted: the file's EOS, EOT and EOM ids and every token
    /// whose text marks an end of turn (`<|im_end|>`, `<end_of_turn>`, …).
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// Whether `id` ends generation.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }
}

/// Reads an optional special-token id and checks it is in the vocabulary.
fn special_id(gguf: &Gguf, key: &str, vocab_size: usize) -> Result<Option<u32>> {
    let Some(v) = gguf.get(key) else { return Ok(None) };
    let id = v.as_i128().ok_or_else(|| Error::MetadataType { key: key.into(), expected: "integer", found: v.type_name() })?;
    if id < 0 || id >= vocab_size as i128 {
        // llama.cpp writes -1 (as an unsigned max) for "none" in some files.
        if id == -1 || id == u32::MAX as i128 {
            return Ok(None);
        }
        return Err(Error::TokenOutOfRange { id: id.clamp(i64::MIN as i128, i64::MAX as i128) as i64, vocab_size, what: format!("`{key}`") });
    }
    Ok(Some(id as u32))
}

/// The end-of-generation set: the file's EOS, EOT and EOM ids and the tokens found by their
/// text (see [`END_OF_GENERATION_TEXTS`]).
fn end_of_generation_set(gguf: &Gguf, texts: &[impl AsRef<str>], types: &mut [TokenType]) -> Result<Vec<u32>> {
    let mut set = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        set.extend(special_id(gguf, key, texts.len())?);
    }
    for (id, text) in texts.iter().enumerate() {
        if END_OF_GENERATION_TEXTS.contains(&text.as_ref()) {
            set.push(id as u32);
            types[id] = TokenType::Control;
        }
    }
    set.sort_unstable();
    set.dedup();
    Ok(set)
}

/// Many short strings in one buffer. Kept as separate allocations, a vocabulary's 50,000 to
/// 260,000 token texts cost about 50 bytes each beyond their text (a header and the allocator's
/// rounding), and the tokenizer keeps two such lists: several megabytes for nothing.
struct Table {
    bytes: Vec<u8>,
    /// Where each entry ends in `bytes`; it starts where the one before ends.
    ends: Vec<usize>,
}

impl Table {
    fn new<T: AsRef<[u8]>>(items: impl IntoIterator<Item = T>) -> Table {
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        for item in items {
            bytes.extend_from_slice(item.as_ref());
            ends.push(bytes.len());
        }
        bytes.shrink_to_fit();
        ends.shrink_to_fit();
        Table { bytes, ends }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, index: usize) -> Option<&[u8]> {
        let end = *self.ends.get(index)?;
        let start = index.checked_sub(1).map_or(0, |before| self.ends[before]);
        Some(&self.bytes[start..end])
    }
}

impl Specials {
    fn new(texts: &[impl AsRef<str>], types: &[TokenType]) -> Result<Specials> {
        let mut ids: Vec<u32> = (0..texts.len() as u32)
            .filter(|&id| {
                matches!(types[id as usize], TokenType::Control | TokenType::UserDefined | TokenType::Unknown) && !texts[id as usize].as_ref().is_empty()
            })
            .collect();
        // Longest text first; ties by id, so the order is the same on every run.
        let len = |id: u32| texts[id as usize].as_ref().len();
        ids.sort_by(|&a, &b| len(b).cmp(&len(a)).then(a.cmp(&b)));
        let matcher = if ids.is_empty() {
            None
        } else {
            let patterns = ids.iter().map(|&id| texts[id as usize].as_ref());
            Some(AhoCorasick::new(patterns).map_err(|e| Error::Tokenizer(format!("special tokens: {e}")))?)
        };
        Ok(Specials { ids, matcher })
    }
}

/// gpt2-style byte-level BPE, as llama.cpp runs it: the pre-tokenizer's regexes split the text
/// into words (`tokenizers`' implementation), each word starts as one token per byte, and
/// adjacent pairs merge, lowest merge rank first (leftmost on ties), while any pair has a merge.
/// (`tokenizers`' own BPE model would hold the vocabulary twice more, in hash maps of `String`s:
/// 9 MiB for SmolLM2's 49,152 tokens, 30 for Qwen2.5's 151,936.)
struct Bpe {
    split: Sequence,
    /// With `ignore_merges`, token ids ordered by text (ties: the last id first, as llama.cpp's
    /// text-to-token map keeps the last of duplicates), to find a word's token in
    /// `Tokenizer::texts`; otherwise empty.
    by_text: Vec<u32>,
    /// The token of each byte, spelled in the byte-level alphabet.
    byte_tokens: [Option<u32>; 256],
    /// `(left, right)` → `(rank, merged)`: the merge's position in the file's list and the
    /// token it makes.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Whether a word found whole in the vocabulary is that token, unmerged.
    ignore_merges: bool,
}

impl Bpe {
    fn new(texts: &[&str], merges: &[&str], rule: PreTokenizer) -> Result<Bpe> {
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for regex in rule.regexes {
            let split = Split::new(SplitPattern::Regex((*regex).to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
            steps.push(split.into());
        }
        // While building, a map from text to id (the last of duplicates, as llama.cpp's).
        let ids: HashMap<&str, u32> = texts.iter().enumerate().map(|(id, &text)| (text, id as u32)).collect();
        let find = |text: &str| ids.get(text).copied();
        let mut by_text = Vec::new();
        if rule.ignore_merges {
            by_text = (0..texts.len() as u32).collect();
            by_text.sort_unstable_by(|&a, &b| texts[a as usize].cmp(texts[b as usize]).then(b.cmp(&a)));
        }
        let mut byte_tokens = [None; 256];
        for (byte, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = find(byte_level_char(byte as u8).encode_utf8(&mut [0; 4]));
        }
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let inconsistent = |reason: &str| Error::InvalidMetadata { key: "tokenizer.ggml.merges".into(), reason: format!("merge {rank} {merge:?}: {reason}") };
            let (left, right) = merge.split_once(' ').ok_or_else(|| inconsistent("not two tokens separated by a space"))?;
            let id = |text: &str| find(text).ok_or_else(|| inconsistent(&format!("{text:?} is not in the vocabulary")));
            let pair = (id(left)?, id(right)?);
            let merged = id(&[left, right].concat())?;
            // The first of duplicate merges counts, as in llama.cpp.
            table.entry(pair).or_insert((rank as u32, merged));
        }
        Ok(Bpe { split: Sequence::new(steps), by_text, byte_tokens, merges: table, ignore_merges: rule.ignore_merges })
    }

    /// Encodes one fragment of raw text, appending to `out`; `texts` is the vocabulary.
    fn encode(&self, raw: &str, texts: &Table, out: &mut Vec<u32>) -> Result<()> {
        let mut words = PreTokenizedString::from(raw);
        self.split.pre_tokenize(&mut words).map_err(|e| Error::Tokenizer(format!("pre-tokenizer: {e}")))?;
        for (word, _, _) in words.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            if self.ignore_merges {
                let spelled: String = word.bytes().map(byte_level_char).collect();
                if let Some(id) = self.find(texts, spelled.as_bytes()) {
                    out.push(id);
                    continue;
                }
            }
            self.merge(word.as_bytes(), out)?;
        }
        Ok(())
    }

    /// The token whose text is `text`.
    fn find(&self, texts: &Table, text: &[u8]) -> Option<u32> {
        let text_of = |id: u32| texts.get(id as usize).unwrap_or_default();
        let at = self.by_text.partition_point(|&id| text_of(id) < text);
        self.by_text.get(at).copied().filter(|&id| text_of(id) == text)
    }

    /// The tokens of one word: its bytes' tokens, merged.
    fn merge(&self, word: &[u8], out: &mut Vec<u32>) -> Result<()> {
        // Linked symbols: (token, previous, next); a merged-away symbol's token is `None`.
        type Linked = (Option<u32>, Option<usize>, Option<usize>);
        // A byte the vocabulary has no token for stays a symbol that merges with nothing and
        // is then left out, as llama.cpp leaves it out (SmolLM2 has no token for 0x06).
        let mut symbols: Vec<Linked> = Vec::with_capacity(word.len());
        for (i, &byte) in word.iter().enumerate() {
            let id = self.byte_tokens[byte as usize].unwrap_or(NO_TOKEN);
            symbols.push((Some(id), i.checked_sub(1), (i + 1 < word.len()).then_some(i + 1)));
        }
        // Candidates: (rank, left symbol, left token, right token, merged token), lowest first.
        let mut queue = BinaryHeap::new();
        let candidate = |symbols: &[Linked], left: usize| {
            let (l, _, next) = symbols[left];
            let (r, _, _) = symbols[next?];
            let (rank, merged) = *self.merges.get(&(l?, r?))?;
            Some(Reverse((rank, left, l?, r?, merged)))
        };
        for left in 0..symbols.len() {
            queue.extend(candidate(&symbols, left));
        }
        while let Some(Reverse((_, left, l, r, merged))) = queue.pop() {
            let (token, _, next) = symbols[left];
            let Some(right) = next else { continue };
            if token != Some(l) || symbols[right].0 != Some(r) {
                continue; // one side was merged into something else since this was queued
            }
            let after = symbols[right].2;
            symbols[left] = (Some(merged), symbols[left].1, after);
            symbols[right].0 = None;
            if let Some(after) = after {
                symbols[after].1 = Some(left);
            }
            if let Some(before) = symbols[left].1 {
                queue.extend(candidate(&symbols, before));
            }
            queue.extend(candidate(&symbols, left));
        }
        out.extend(symbols.iter().filter_map(|s| s.0).filter(|&id| id != NO_TOKEN));
        Ok(())
    }
}

/// Stands for a byte without a token during BPE merges: no merge pair contains it.
const NO_TOKEN: u32 = u32::MAX;

/// GPT-2's byte alphabet: printable bytes stand for themselves, the other 68 bytes are mapped
/// to U+0100 onwards in byte order. Returns the byte a character stands for.
fn byte_level_char_to_byte(c: char) -> Option<u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let cp = c as u32;
    if printable(cp) {
        return Some(cp as u8);
    }
    let index = cp.checked_sub(256)?;
    (0u32..256).filter(|&b| !printable(b)).nth(index as usize).map(|b| b as u8)
}

/// The character GPT-2's byte alphabet spells `byte` with (the inverse of
/// [`byte_level_char_to_byte`]).
fn byte_level_char(byte: u8) -> char {
    let code = match byte {
        0..=32 => 256 + u32::from(byte),
        127..=160 => 256 + 33 + u32::from(byte - 127),
        173 => 256 + 33 + 34,
        _ => u32::from(byte),
    };
    char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The bytes a gpt2-style token stands for.
fn bpe_piece(text: &str, ty: TokenType) -> Box<[u8]> {
    match ty {
        TokenType::Normal | TokenType::Byte => {
            let mut bytes = Vec::with_capacity(text.len());
            for c in text.chars() {
                match byte_level_char_to_byte(c) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            bytes.into()
        }
        TokenType::Unused => Box::default(),
        _ => text.as_bytes().into(),
    }
}

/// The bytes a SentencePiece-style token stands for.
fn spm_piece(text: &str, ty: TokenType) -> Box<[u8]> {
    match ty {
        TokenType::Normal => text.replace('\u{2581}', " ").into_bytes().into(),
        TokenType::Byte => match parse_byte_token(text) {
            Some(b) => Box::new([b]),
            None => text.as_bytes().into(),
        },
        TokenType::Unused => Box::default(),
        _ => text.as_bytes().into(),
    }
}

/// `<0x41>` → 0x41.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A candidate merge of two adjacent symbols in SentencePiece encoding.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text, to detect a stale candidate.
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The heap's top is the highest score, leftmost on ties.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// A run of the text during SentencePiece merging; merged-away symbols have `len == 0`.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    fn new(texts: &[&str], types: &[TokenType], scores: Vec<f64>, unknown: Option<u32>, add_space_prefix: bool) -> Spm {
        let mut by_text = HashMap::with_capacity(texts.len());
        let mut byte_tokens = [None; 256];
        for (id, text) in texts.iter().enumerate() {
            // The first of duplicate texts wins, as in a vocabulary built front to back.
            by_text.entry(text.to_string()).or_insert(id as u32);
            if types[id] == TokenType::Byte {
                if let Some(b) = parse_byte_token(text) {
                    byte_tokens[b as usize].get_or_insert(id as u32);
                }
            }
        }
        Spm { by_text, scores: scores.into_iter().map(|s| s as f32).collect(), byte_tokens, unknown, add_space_prefix }
    }

    /// Encodes one fragment of raw text, appending to `out`.
    fn encode(&self, raw: &str, after_special: bool, out: &mut Vec<u32>) -> Result<()> {
        let mut text = String::with_capacity(raw.len() + 3);
        if self.add_space_prefix && after_special {
            text.push(' ');
        }
        text.push_str(raw);
        let text = text.replace(' ', "\u{2581}");
        if text.is_empty() {
            return Ok(());
        }

        // One symbol per character, linked to its neighbours.
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let end = start + c.len_utf8();
            symbols.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: (end < text.len()).then_some(i + 1) });
        }
        let mut queue = BinaryHeap::new();
        let candidate = |symbols: &[Symbol], left: usize, right: usize| -> Option<Bigram> {
            let (l, r) = (symbols[left], symbols[right]);
            let joined = &text[l.start..r.start + r.len];
            let id = *self.by_text.get(joined)?;
            Some(Bigram { score: self.scores[id as usize], left, right, len: joined.len() })
        };
        for i in 1..symbols.len() {
            queue.extend(candidate(&symbols, i - 1, i));
        }
        // Merge the best-scoring adjacent pair until no pair forms a token.
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue; // one side was merged into something else since this was queued
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(b.left);
            }
            if let Some(prev) = symbols[b.left].prev {
                queue.extend(candidate(&symbols, prev, b.left));
            }
            if let Some(next) = symbols[b.left].next {
                queue.extend(candidate(&symbols, b.left, next));
            }
        }

        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.by_text.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    // No token covers this character: spell it in byte tokens.
                    for &byte in piece.as_bytes() {
                        let id = self.byte_tokens[byte as usize].or(self.unknown).ok_or_else(|| {
                            Error::Tokenizer(format!("the vocabulary has no token for byte 0x{byte:02X} and no unknown token"))
                        })?;
                        out.push(id);
                    }
                }
            }
            at = s.next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_round_trips_every_byte() {
        let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let mut next = 256u32;
        for b in 0u32..256 {
            let c = if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            };
            assert_eq!(byte_level_char_to_byte(c), Some(b as u8), "byte {b}");
        }
        assert_eq!(byte_level_char_to_byte('\u{0100}'), Some(0));
        assert_eq!(byte_level_char_to_byte('Ġ'), Some(b' '));
        assert_eq!(byte_level_char_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(byte_level_char_to_byte('漢'), None);
        for b in 0..=255u8 {
            assert_eq!(byte_level_char_to_byte(byte_level_char(b)), Some(b), "byte {b}");
        }
    }

    #[test]
    fn every_pre_tokenizer_regex_compiles() {
        for (names, rule) in PRE_TOKENIZERS {
            for regex in rule.regexes {
                Split::new(SplitPattern::Regex((*regex).to_string()), SplitDelimiterBehavior::Isolated, false)
                    .unwrap_or_else(|e| panic!("{names:?}: {e}"));
            }
        }
    }

    #[test]
    fn unknown_pre_tokenizer_is_named() {
        let err = pre_tokenizer("no-such-pre").err().unwrap().to_string();
        assert!(err.contains("no-such-pre") && err.contains("qwen2"), "{err}");
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("<0x0>"), None);
        assert_eq!(parse_byte_token("0x0A"), None);
    }
}
