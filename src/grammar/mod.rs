//! Constrained output: GBNF grammars (llama.cpp's syntax) and JSON Schema converted to them.
//!
//! A [`Grammar`] is parsed and checked once and is cheap to clone. A generation runs it through
//! a [`GrammarState`]: before each token is drawn, the sampler asks the state which candidates
//! can continue the text ([`GrammarState::allows`]); once a token is chosen the state advances
//! over its bytes ([`GrammarState::accept`]). End-of-generation tokens are allowed only where the
//! grammar can end.
//!
//! The state is llama.cpp's: a set of *stacks*, each the positions still to match in the rules
//! it is inside, innermost last, advanced one code point at a time. A token may end inside a
//! UTF-8 character; the bytes seen of it are kept and a candidate is judged by whether some
//! character it could complete to is allowed.
//!
//! ```
//! use candlewick::grammar::{json_schema_to_gbnf, Grammar};
//!
//! # fn main() -> candlewick::Result<()> {
//! let yes_no = Grammar::parse(r#"root ::= ("yes" | "no") "." "#)?;
//! let schema = serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}}});
//! let from_schema = Grammar::parse(&json_schema_to_gbnf(&schema)?)?;
//! # let _ = (yes_no, from_schema);
//! # Ok(())
//! # }
//! ```

mod gbnf;
pub mod json_schema;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use gbnf::Elem;

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
pub use json_schema::json_schema_to_gbnf;

/// Most stacks a grammar state may hold at once. Each is one way the text so far can be read;
/// an ambiguous grammar can multiply them with every character, so a bound keeps a pathological
/// grammar from taking all memory and time.
const MAX_STACKS: usize = 1024;

/// Most rule positions those stacks may hold in all. A grammar that nests a rule once more with
/// every character (`root ::= . root*`) keeps few stacks but ever deeper ones; this bounds the
/// work of a step as [`MAX_STACKS`] bounds their number.
const MAX_POSITIONS: usize = 1 << 14;

/// A parsed and checked GBNF grammar (llama.cpp's syntax), starting at the rule `root`.
///
/// Cheap to clone (the rules are shared). Two grammars are equal when their text is.
#[derive(Clone)]
pub struct Grammar {
    inner: Arc<Rules>,
}

struct Rules {
    /// Every rule's elements, one after another.
    elems: Vec<Elem>,
    /// Where each rule starts in `elems`.
    starts: Vec<u32>,
    root: u32,
    source: String,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar").field("rules", &self.inner.starts.len()).field("source_bytes", &self.inner.source.len()).finish()
    }
}

impl PartialEq for Grammar {
    fn eq(&self, other: &Grammar) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.inner.source == other.inner.source
    }
}

impl Grammar {
    /// Parses GBNF text: rules `name ::= alternatives`, alternatives `|`, groups `( )`, `*` `+`
    /// `?` and `{m}`/`{m,}`/`{m,n}`, string literals, character classes (`[a-z]`, `[^"\\]`),
    /// escapes (`\n`, `\t`, `\r`, `\\`, `\"`, `\[`, `\]`, `\-`, `\xHH`, `\uHHHH`, `\UHHHHHHHH`),
    /// `.` (any character) and `#` comments. Generation starts at the rule `root`.
    ///
    /// # Errors
    /// [`Error::Grammar`] with the line and column of the first problem: a syntax error, a rule
    /// used but not defined, no `root` rule, or a left-recursive rule (`a ::= a "x" | …`, which
    /// llama.cpp cannot run either).
    pub fn parse(text: &str) -> Result<Grammar> {
        let parsed = gbnf::parse(text)?;
        let root = parsed.names.iter().position(|n| n == "root").ok_or_else(|| Error::Grammar { line: 1, column: 1, message: "the grammar has no `root` rule".into() })?;
        if let Some(rule) = left_recursive(&parsed.rules) {
            let name = parsed.names.get(rule).map_or("?", String::as_str);
            let at = find_definition(text, name);
            return Err(gbnf::error_at(text, at, format!("rule `{name}` is left-recursive (it can reach itself before matching any character)")));
        }
        let mut elems = Vec::new();
        let mut starts = Vec::with_capacity(parsed.rules.len());
        for rule in &parsed.rules {
            starts.push(elems.len() as u32);
            elems.extend_from_slice(rule);
        }
        Ok(Grammar { inner: Arc::new(Rules { elems, starts, root: root as u32, source: text.to_string() }) })
    }

    /// The grammar's text, as given to [`Grammar::parse`].
    #[must_use]
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Parses JSON Schema (a JSON value) into the grammar llama.cpp's converter writes for it.
    ///
    /// # Errors
    /// [`Error::JsonSchema`] naming the unsupported or invalid part by its JSON pointer.
    pub fn from_json_schema(schema: &serde_json::Value) -> Result<Grammar> {
        Grammar::parse(&json_schema_to_gbnf(schema)?)
    }

    /// [`Grammar::from_json_schema`] for a schema given as JSON text.
    ///
    /// # Errors
    /// [`Error::JsonSchema`] when the text is not JSON (at pointer `#`) or the schema cannot be
    /// converted.
    pub fn from_json_schema_text(schema: &str) -> Result<Grammar> {
        let value: serde_json::Value = serde_json::from_str(schema).map_err(|e| Error::JsonSchema { pointer: "#".into(), message: format!("not valid JSON: {e}") })?;
        Grammar::from_json_schema(&value)
    }
}

/// Byte offset of `name ::=` in `text` (0 when not found), for error positions.
fn find_definition(text: &str, name: &str) -> usize {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(name) {
            if rest.trim_start().starts_with("::=") {
                return at + (line.len() - trimmed.len());
            }
        }
        at += line.len();
    }
    0
}

/// The first rule that can reach itself through references at the start of an alternative
/// whose earlier items all match the empty string; `None` when there is none.
fn left_recursive(rules: &[Vec<Elem>]) -> Option<usize> {
    // Which rules can match the empty string (a fixed point).
    let mut nullable = vec![false; rules.len()];
    let alternatives = |rule: &Vec<Elem>| rule.split(|e| e.ends_sequence()).take(rule.iter().filter(|e| e.ends_sequence()).count()).map(<[Elem]>::to_vec).collect::<Vec<_>>();
    let alts: Vec<Vec<Vec<Elem>>> = rules.iter().map(alternatives).collect();
    let mut changed = true;
    while changed {
        changed = false;
        for (r, rule_alts) in alts.iter().enumerate() {
            if nullable[r] {
                continue;
            }
            let empty = rule_alts.iter().any(|alt| alt.iter().all(|e| matches!(e, Elem::RuleRef(id) if nullable.get(*id as usize) == Some(&true))));
            if empty {
                nullable[r] = true;
                changed = true;
            }
        }
    }
    // Edges to the rules each rule can start with.
    let leftmost: Vec<Vec<usize>> = alts
        .iter()
        .map(|rule_alts| {
            let mut out = Vec::new();
            for alt in rule_alts {
                for e in alt {
                    let Elem::RuleRef(id) = *e else { break };
                    out.push(id as usize);
                    if nullable.get(id as usize) != Some(&true) {
                        break;
                    }
                }
            }
            out
        })
        .collect();
    // A cycle in that graph, found by an iterative depth-first search (0 new, 1 open, 2 done).
    let mut mark = vec![0u8; rules.len()];
    for start in 0..rules.len() {
        if mark[start] != 0 {
            continue;
        }
        let mut path = vec![(start, 0usize)];
        mark[start] = 1;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let edges = leftmost.get(node).map_or(&[][..], Vec::as_slice);
            if let Some(&to) = edges.get(*next) {
                *next += 1;
                match mark.get(to) {
                    Some(1) => return Some(to),
                    Some(0) => {
                        mark[to] = 1;
                        path.push((to, 0));
                    }
                    _ => {}
                }
            } else {
                mark[node] = 2;
                path.pop();
            }
        }
    }
    None
}

/// Bytes of a UTF-8 character seen so far (a token ended inside it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Partial {
    /// The bits decoded so far.
    value: u32,
    /// Continuation bytes still expected; `-1` after an invalid sequence.
    remain: i8,
}

/// Decodes `bytes` as UTF-8, continuing `partial`, into `out`. Returns the state after the last
/// byte, or `None` for an invalid sequence. Tolerant the way llama.cpp's grammar decoder is:
/// continuation bytes are only checked when they continue a character begun in an earlier
/// token.
fn decode(bytes: &[u8], partial: Partial, out: &mut Vec<u32>) -> Option<Partial> {
    out.clear();
    let mut value = partial.value;
    let mut remain = partial.remain;
    if remain < 0 {
        return None;
    }
    let mut i = 0;
    while remain > 0 {
        let Some(&b) = bytes.get(i) else { break };
        if b >> 6 != 2 {
            return None;
        }
        value = (value << 6) | u32::from(b & 0x3F);
        remain -= 1;
        i += 1;
    }
    if partial.remain > 0 && remain == 0 {
        out.push(value);
    }
    while let Some(&first) = bytes.get(i) {
        let len: i8 = match first >> 4 {
            0..=7 => 1,
            8..=11 => return None,
            12 | 13 => 2,
            14 => 3,
            _ => 4,
        };
        remain = len - 1;
        value = u32::from(first) & ((1u32 << (7 - remain)) - 1);
        i += 1;
        while remain > 0 {
            let Some(&b) = bytes.get(i) else { break };
            value = (value << 6) | u32::from(b & 0x3F);
            remain -= 1;
            i += 1;
        }
        if remain == 0 {
            out.push(value);
        }
    }
    // Nothing pending: the same state whichever character ended the text.
    Some(if remain == 0 { Partial::default() } else { Partial { value, remain } })
}

/// Where a generation is in a [`Grammar`]: the set of stacks, and the bytes of a character a
/// token left unfinished.
#[derive(Clone, Debug)]
pub struct GrammarState {
    grammar: Grammar,
    stacks: Vec<Vec<u32>>,
    partial: Partial,
    /// Which ASCII characters can come next (bit per character), worked out on first use after
    /// each advance: most tokens are refused on their first byte by one bit test.
    ascii_next: Option<[u64; 2]>,
    /// Allowed tokens from the last walk of a vocabulary ([`GrammarState::allowed_tokens`]).
    mask: Vec<u64>,
    /// The last few walks, by where they started: inside a JSON string, or any run of ordinary
    /// characters, every step starts from the same stacks, and its walk is a copy.
    walks: Vec<Walked>,
    /// Scratch: the code points of the token being judged, and two generations of stacks.
    chars: Vec<u32>,
    scratch: Vec<Vec<u32>>,
}

impl GrammarState {
    /// The state before any text.
    ///
    /// # Errors
    /// [`Error::Grammar`] when the grammar's start expands to more than a few thousand ways of
    /// reading the text (an ambiguity llama.cpp would also crawl through).
    pub fn new(grammar: &Grammar) -> Result<GrammarState> {
        let rules = &grammar.inner;
        let mut stacks = Vec::new();
        let mut gather = Gather::new(&mut stacks);
        let root_start = rules.starts.get(rules.root as usize).copied().unwrap_or(0);
        for alt in alternatives(&rules.elems, root_start) {
            let stack = if rules.elems.get(alt as usize).is_some_and(|e| !e.ends_sequence()) { vec![alt] } else { Vec::new() };
            advance(&rules.elems, &rules.starts, stack, &mut gather)?;
        }
        Ok(GrammarState { grammar: grammar.clone(), stacks, partial: Partial::default(), ascii_next: None, mask: Vec::new(), walks: Vec::new(), chars: Vec::new(), scratch: Vec::new() })
    }

    /// Whether the text so far is a complete sentence of the grammar (an end-of-generation
    /// token is allowed).
    #[must_use]
    pub fn can_end(&self) -> bool {
        self.stacks.iter().any(Vec::is_empty)
    }

    /// Whether a token whose text is `bytes` can come next (for a token that does not end
    /// generation). Empty tokens are never allowed, as in llama.cpp.
    pub fn allows(&mut self, bytes: &[u8]) -> bool {
        // Token text is a C string in llama.cpp: a NUL ends it.
        let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
        let Some(&first) = bytes.first() else { return false };
        if first < 0x80 && self.partial.remain == 0 {
            let ascii = self.ascii_next();
            if ascii[usize::from(first >> 6)] & (1 << (first & 63)) == 0 {
                return false;
            }
        }
        let mut chars = std::mem::take(&mut self.chars);
        let result = match decode(bytes, self.partial, &mut chars) {
            None => false,
            Some(after) => self.allows_chars(&chars, after),
        };
        self.chars = chars;
        result
    }

    fn ascii_next(&mut self) -> [u64; 2] {
        if let Some(bits) = self.ascii_next {
            return bits;
        }
        let elems = &self.grammar.inner.elems;
        let mut bits = [0u64; 2];
        for c in 0..128u32 {
            if self.stacks.iter().any(|s| s.last().is_some_and(|&pos| matches(elems, pos, c))) {
                bits[(c >> 6) as usize] |= 1 << (c & 63);
            }
        }
        self.ascii_next = Some(bits);
        bits
    }

    fn allows_chars(&mut self, chars: &[u32], after: Partial) -> bool {
        let rules = &self.grammar.inner;
        let (elems, starts) = (&rules.elems[..], &rules.starts[..]);
        // Cheap test first: most tokens fail on their first character, with no stacks built.
        if let Some(&first) = chars.first() {
            if !self.stacks.iter().any(|s| s.last().is_some_and(|&pos| matches(elems, pos, first))) {
                return false;
            }
        }
        let mut current: Option<Vec<Vec<u32>>> = None;
        for &c in chars {
            let from = current.as_deref().unwrap_or(&self.stacks);
            let mut next = std::mem::take(&mut self.scratch);
            next.clear();
            if step(elems, starts, from, c, &mut next).is_err() || next.is_empty() {
                self.scratch = next;
                return false;
            }
            if let Some(old) = current.replace(next) {
                self.scratch = old;
            }
        }
        let stacks = current.as_deref().unwrap_or(&self.stacks);
        if after.remain == 0 {
            return true;
        }
        stacks.iter().any(|s| s.last().is_some_and(|&pos| matches_partial(elems, pos, after)))
    }

    /// A filter that says which of `tokenizer`'s tokens can come next, for
    /// [`crate::sampling::Sampler::sample_allowed`]: end-of-generation tokens where the grammar
    /// can end, other tokens by their text with special tokens spelled out (as llama.cpp
    /// matches them). The first tokens asked about are tested one by one; when a step asks
    /// about more than a few hundred (a sampler that needs many candidates where the grammar
    /// allows few), the rest come from one walk of `vocabulary`.
    pub fn filter<'f>(&'f mut self, tokenizer: &'f Tokenizer, vocabulary: &'f Vocabulary) -> TokenFilter<'f> {
        TokenFilter { can_end: self.can_end(), state: self, tokenizer, vocabulary, tested: 0, walked: false }
    }

    /// Sets in `mask` (one bit per token id, `mask[id / 64] >> (id % 64) & 1`) exactly the
    /// tokens of `vocabulary` that [`GrammarState::allows`] allows here, cleared first.
    ///
    /// The allowed tokens depend only on the stacks and the pending bytes, so the last
    /// [`REMEMBERED_WALKS`] walks are kept and a state met again is not walked again.
    pub fn allowed_tokens(&mut self, vocabulary: &Vocabulary, mask: &mut Vec<u64>) {
        let known = self.walks.iter().position(|w| w.vocabulary == vocabulary.id && w.partial == self.partial && w.stacks == self.stacks);
        if let Some(i) = known {
            let walked = self.walks.remove(i);
            mask.clear();
            mask.extend_from_slice(&walked.mask);
            self.walks.push(walked);
            return;
        }
        mask.clear();
        mask.resize(vocabulary.size.div_ceil(64), 0);
        let rules = self.grammar.inner.clone();
        let mut walk = Walk { elems: &rules.elems, starts: &rules.starts, vocabulary, mask, sets: vec![self.stacks.clone()], ids: HashMap::new(), steps: HashMap::new() };
        walk.node(0, vocabulary.spans.len(), 0, 0, self.partial, self.partial.remain > 0);
        if self.walks.len() == REMEMBERED_WALKS {
            self.walks.remove(0);
        }
        self.walks.push(Walked { vocabulary: vocabulary.id, stacks: self.stacks.clone(), partial: self.partial, mask: mask.clone() });
    }

    /// Advances over a token's text (for a token that does not end generation).
    ///
    /// # Errors
    /// [`Error::GrammarRejected`] when the grammar does not allow the text here (the token was
    /// not one [`GrammarState::allows`] accepts), [`Error::Grammar`] when the grammar becomes
    /// too ambiguous to follow.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<()> {
        let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
        let mut chars = std::mem::take(&mut self.chars);
        let rejected = || Error::GrammarRejected { text: String::from_utf8_lossy(bytes).into_owned() };
        let after = decode(bytes, self.partial, &mut chars).ok_or_else(rejected)?;
        let rules = self.grammar.inner.clone();
        self.ascii_next = None;
        for &c in &chars {
            let mut next = Vec::new();
            step(&rules.elems, &rules.starts, &self.stacks, c, &mut next)?;
            if next.is_empty() {
                return Err(rejected());
            }
            self.stacks = next;
        }
        self.chars = chars;
        self.partial = after;
        self.ascii_next = None;
        Ok(())
    }
}

/// Walks a [`GrammarState`] remembers (a vocabulary's mask is `size / 8` bytes: 19 KB for
/// 151,936 tokens).
pub const REMEMBERED_WALKS: usize = 8;

/// One walk of a vocabulary: where it started, and the tokens it allowed.
#[derive(Clone, Debug)]
struct Walked {
    vocabulary: u64,
    stacks: Vec<Vec<u32>>,
    partial: Partial,
    mask: Vec<u64>,
}

/// A vocabulary's token texts sorted bytewise, so that tokens sharing a prefix are adjacent: a
/// trie without nodes. [`GrammarState::allowed_tokens`] walks it, following each prefix the
/// grammar allows once for all the tokens that share it.
#[derive(Debug)]
pub struct Vocabulary {
    /// All the texts, one after another.
    text: Vec<u8>,
    /// (start in `text`, length, token id), sorted by the text.
    spans: Vec<(u32, u32, u32)>,
    size: usize,
    /// Tells this vocabulary from every other one made in the process (a grammar state's
    /// remembered walks are per vocabulary).
    id: u64,
}

impl Vocabulary {
    /// The tokens of `tokenizer` a grammar may allow: all but those that end generation, each
    /// with its text, special tokens spelled out.
    #[must_use]
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Vocabulary {
        let size = tokenizer.vocab_size();
        let tokens = (0..size as u32).filter(|&id| !tokenizer.is_end_of_generation(id)).filter_map(|id| tokenizer.token_bytes(id, true).ok().map(|b| (id, b)));
        Vocabulary::new(size, tokens)
    }

    /// Indexes the tokens `(id, text)` that a grammar may allow (leave out the ones that end
    /// generation). As in llama.cpp, a text ends at its first NUL byte; empty ones are left out.
    /// `size` is the vocabulary's size (one past the largest id).
    #[must_use]
    pub fn new<'t>(size: usize, tokens: impl IntoIterator<Item = (u32, &'t [u8])>) -> Vocabulary {
        let mut text = Vec::new();
        let mut spans = Vec::new();
        for (id, bytes) in tokens {
            let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
            if bytes.is_empty() || (id as usize) >= size {
                continue;
            }
            spans.push((text.len() as u32, bytes.len() as u32, id));
            text.extend_from_slice(bytes);
        }
        let bytes_of = |&(start, len, _): &(u32, u32, u32)| &text[start as usize..(start + len) as usize];
        spans.sort_unstable_by(|a, b| bytes_of(a).cmp(bytes_of(b)));
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Vocabulary { text, spans, size, id: MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) }
    }

    fn bytes(&self, i: usize) -> &[u8] {
        let (start, len, _) = self.spans[i];
        &self.text[start as usize..(start + len) as usize]
    }
}

/// Which tokens a [`GrammarState`] allows next; see [`GrammarState::filter`].
pub struct TokenFilter<'f> {
    state: &'f mut GrammarState,
    tokenizer: &'f Tokenizer,
    vocabulary: &'f Vocabulary,
    can_end: bool,
    /// Tokens tested one by one so far.
    tested: usize,
    /// Whether `state.mask` holds this step's walk.
    walked: bool,
}

/// Tokens a step tests one by one before walking the whole vocabulary instead.
const DIRECT_TESTS: usize = 200;

impl TokenFilter<'_> {
    /// Whether token `id` can come next.
    pub fn allows(&mut self, id: u32) -> bool {
        let bit = |mask: &[u64], id: u32| mask.get(id as usize / 64).is_some_and(|word| word >> (id % 64) & 1 == 1);
        // After the walk, one bit test (a sampler that judges the whole vocabulary asks this
        // for every token).
        if self.walked {
            return bit(&self.state.mask, id);
        }
        if self.tokenizer.is_end_of_generation(id) {
            return self.can_end;
        }
        if self.tested < DIRECT_TESTS {
            self.tested += 1;
            return self.tokenizer.token_bytes(id, true).is_ok_and(|bytes| self.state.allows(bytes));
        }
        let mut mask = std::mem::take(&mut self.state.mask);
        self.state.allowed_tokens(self.vocabulary, &mut mask);
        // The vocabulary leaves out the tokens that end generation: they are allowed where the
        // grammar can end.
        if self.can_end {
            for &eog in self.tokenizer.end_of_generation() {
                if let Some(word) = mask.get_mut(eog as usize / 64) {
                    *word |= 1 << (eog % 64);
                }
            }
        }
        self.state.mask = mask;
        self.walked = true;
        bit(&self.state.mask, id)
    }
}

/// After one byte of a walk: the set of stacks (an index into [`Walk::sets`]), the pending bytes
/// of a character, and whether those began in an earlier token.
type Consumed = (usize, Partial, bool);

/// A walk of a [`Vocabulary`] under a grammar state.
struct Walk<'w> {
    elems: &'w [Elem],
    starts: &'w [u32],
    vocabulary: &'w Vocabulary,
    mask: &'w mut Vec<u64>,
    /// The sets of stacks met so far, each once: many prefixes lead to the same set (every
    /// ordinary character inside a JSON string does), so each step from a set is worked out
    /// once per character.
    sets: Vec<Vec<Vec<u32>>>,
    ids: HashMap<Vec<Vec<u32>>, usize>,
    /// (set, character) → the set after it, `None` when the character is refused.
    steps: HashMap<(usize, u32), Option<usize>>,
}

impl Walk<'_> {
    /// The tokens `lo..hi` share their first `depth` bytes, after which the grammar is at
    /// `stacks` with `partial` bytes of a character pending (`carried`: begun in an earlier
    /// token, so its continuation bytes are checked, as llama.cpp's decoder checks them).
    fn node(&mut self, lo: usize, hi: usize, depth: usize, set: usize, partial: Partial, carried: bool) {
        let vocabulary = self.vocabulary;
        let mut i = lo;
        // Tokens that end here.
        let stacks = self.sets.get(set).map_or(&[][..], Vec::as_slice);
        let ends_ok = depth > 0 && (partial.remain == 0 || stacks.iter().any(|s| s.last().is_some_and(|&pos| matches_partial(self.elems, pos, partial))));
        while i < hi && vocabulary.bytes(i).len() == depth {
            if ends_ok {
                let id = vocabulary.spans[i].2 as usize;
                if let Some(word) = self.mask.get_mut(id / 64) {
                    *word |= 1 << (id % 64);
                }
            }
            i += 1;
        }
        // Each next byte, with the tokens that continue with it.
        while i < hi {
            let b = vocabulary.bytes(i)[depth];
            let end = i + vocabulary.spans[i..hi].partition_point(|&(start, _, _)| vocabulary.text[start as usize + depth] <= b);
            if let Some((next, partial, carried)) = self.consume(set, partial, carried, b) {
                self.node(i, end, depth + 1, next, partial, carried);
            }
            i = end;
        }
    }

    /// The state after byte `b` from the set of stacks `set`, or `None` when no text can go on
    /// this way.
    fn consume(&mut self, set: usize, partial: Partial, carried: bool, b: u8) -> Option<Consumed> {
        let (value, remain, carried) = if partial.remain > 0 {
            if carried && b >> 6 != 2 {
                return None;
            }
            ((partial.value << 6) | u32::from(b & 0x3F), partial.remain - 1, carried)
        } else {
            let len: i8 = match b >> 4 {
                0..=7 => 1,
                8..=11 => return None,
                12 | 13 => 2,
                14 => 3,
                _ => 4,
            };
            (u32::from(b) & ((1u32 << (8 - len)) - 1).min(0x7F), len - 1, false)
        };
        if remain > 0 {
            // Prune only where no character the bytes can still become is allowed: inside a
            // token the decoder does not check continuation bytes (nor overlong forms), so
            // this is a plain range test, and a negated set may always match.
            let pending = Partial { value, remain };
            let shift = 6 * remain as u32;
            let (low, high) = (value << shift, (value << shift) | ((1u32 << shift) - 1));
            let stacks = self.sets.get(set).map_or(&[][..], Vec::as_slice);
            let viable = stacks.iter().any(|s| s.last().is_some_and(|&pos| may_match_range(self.elems, pos, low, high)));
            return viable.then_some((set, pending, carried));
        }
        let next = match self.steps.get(&(set, value)) {
            Some(&next) => next,
            None => {
                let next = self.step_set(set, value);
                self.steps.insert((set, value), next);
                next
            }
        };
        next.map(|next| (next, Partial::default(), false))
    }

    /// The set after character `c` from `set`, added to `sets` when new.
    fn step_set(&mut self, set: usize, c: u32) -> Option<usize> {
        let mut next = Vec::new();
        step(self.elems, self.starts, self.sets.get(set)?, c, &mut next).ok()?;
        if next.is_empty() {
            return None;
        }
        if let Some(&id) = self.ids.get(&next) {
            return Some(id);
        }
        self.sets.push(next.clone());
        self.ids.insert(next, self.sets.len() - 1);
        Some(self.sets.len() - 1)
    }
}

/// The start positions of the alternatives of the rule that starts at `start`.
fn alternatives(elems: &[Elem], start: u32) -> impl Iterator<Item = u32> + '_ {
    let mut pos = Some(start);
    std::iter::from_fn(move || {
        let this = pos?;
        let mut p = this as usize;
        while elems.get(p).is_some_and(|e| !e.ends_sequence()) {
            p += 1;
        }
        pos = match elems.get(p) {
            Some(Elem::Alt) => Some(p as u32 + 1),
            _ => None,
        };
        Some(this)
    })
}

/// Expands rule references at the top of `stack` until every resulting stack has a character
/// set on top (or is empty: the grammar is complete), adding each new one to `out`.
fn advance(elems: &[Elem], starts: &[u32], stack: Vec<u32>, out: &mut Gather) -> Result<()> {
    let mut work = vec![stack];
    while let Some(stack) = work.pop() {
        match stack.last().and_then(|&pos| elems.get(pos as usize).map(|e| (pos, *e))) {
            Some((pos, Elem::RuleRef(rule))) => {
                // Popping a finished rule off many stacks leads to the same stack again and
                // again (one per depth of a rule nested in itself); its expansion is the same.
                if !out.expanded.insert(stack.clone()) {
                    continue;
                }
                let after = pos + 1;
                let start = starts.get(rule as usize).copied().unwrap_or(0);
                for alt in alternatives(elems, start) {
                    let mut next = stack[..stack.len() - 1].to_vec();
                    if elems.get(after as usize).is_some_and(|e| !e.ends_sequence()) {
                        next.push(after);
                    }
                    if elems.get(alt as usize).is_some_and(|e| !e.ends_sequence()) {
                        next.push(alt);
                    }
                    work.push(next);
                }
            }
            _ => out.add(stack)?,
        }
    }
    Ok(())
}

/// The stacks of one step, each kept once (a hash set finds a repeat, so a step costs what its
/// stacks hold, not the square of it), within [`MAX_STACKS`] and [`MAX_POSITIONS`].
struct Gather<'o> {
    out: &'o mut Vec<Vec<u32>>,
    seen: HashSet<Vec<u32>>,
    /// The stacks with a rule reference on top already expanded in this step.
    expanded: HashSet<Vec<u32>>,
    positions: usize,
}

impl<'o> Gather<'o> {
    /// Gathers into `out`, which must start empty.
    fn new(out: &'o mut Vec<Vec<u32>>) -> Gather<'o> {
        debug_assert!(out.is_empty());
        Gather { out, seen: HashSet::new(), expanded: HashSet::new(), positions: 0 }
    }

    fn add(&mut self, stack: Vec<u32>) -> Result<()> {
        if self.seen.contains(&stack) {
            return Ok(());
        }
        let too_ambiguous = |what: String| Error::Grammar { line: 1, column: 1, message: format!("the grammar is too ambiguous: {what}") };
        if self.out.len() >= MAX_STACKS {
            return Err(too_ambiguous(format!("more than {MAX_STACKS} ways to read the text")));
        }
        self.positions += stack.len();
        if self.positions > MAX_POSITIONS {
            return Err(too_ambiguous(format!("its ways to read the text hold more than {MAX_POSITIONS} rule positions")));
        }
        self.seen.insert(stack.clone());
        self.out.push(stack);
        Ok(())
    }
}

/// The stacks after matching character `c` from each of `stacks`.
/// `out` must start empty.
fn step(elems: &[Elem], starts: &[u32], stacks: &[Vec<u32>], c: u32, out: &mut Vec<Vec<u32>>) -> Result<()> {
    let mut out = Gather::new(out);
    for stack in stacks {
        let Some(&pos) = stack.last() else { continue };
        if !matches(elems, pos, c) {
            continue;
        }
        let end = set_end(elems, pos);
        let mut next = stack[..stack.len() - 1].to_vec();
        if elems.get(end as usize).is_some_and(|e| !e.ends_sequence()) {
            next.push(end);
        }
        advance(elems, starts, next, &mut out)?;
    }
    Ok(())
}

/// The position after the character set that starts at `pos`.
fn set_end(elems: &[Elem], pos: u32) -> u32 {
    let mut p = pos as usize + 1;
    while matches!(elems.get(p), Some(Elem::CharAlt(_) | Elem::RangeUpper(_))) {
        p += 1;
    }
    p as u32
}

/// Calls `hit(lo, hi)` for each character or range of the set at `pos`, stopping when it returns
/// true; returns whether the set is positive (`[…]`, a literal or `.`) and whether `hit` stopped.
fn scan_set(elems: &[Elem], pos: u32, mut hit: impl FnMut(u32, u32) -> bool) -> (bool, bool) {
    let mut p = pos as usize;
    let positive = !matches!(elems.get(p), Some(Elem::CharNot(_)));
    loop {
        let lo = match elems.get(p) {
            Some(Elem::Any) => return (positive, true),
            Some(Elem::Char(c) | Elem::CharNot(c) | Elem::CharAlt(c)) => *c,
            _ => return (positive, false),
        };
        let (hi, len) = match elems.get(p + 1) {
            Some(Elem::RangeUpper(hi)) => (*hi, 2),
            _ => (lo, 1),
        };
        if hit(lo, hi) {
            return (positive, true);
        }
        p += len;
        if !matches!(elems.get(p), Some(Elem::CharAlt(_))) {
            return (positive, false);
        }
    }
}

/// Whether the character set at `pos` matches `c`.
fn matches(elems: &[Elem], pos: u32, c: u32) -> bool {
    let (positive, hit) = scan_set(elems, pos, |lo, hi| lo <= c && c <= hi);
    positive == hit
}

/// Whether the set at `pos` can match some character in `low..=high` (a negated set is assumed
/// to).
fn may_match_range(elems: &[Elem], pos: u32, low: u32, high: u32) -> bool {
    let (positive, hit) = scan_set(elems, pos, |lo, hi| lo <= high && low <= hi);
    !positive || hit
}

/// Whether some character the partial UTF-8 sequence could complete to matches the set at `pos`.
fn matches_partial(elems: &[Elem], pos: u32, partial: Partial) -> bool {
    let Partial { value, remain } = partial;
    // An invalid sequence, or a 7-bit character spread over two bytes (overlong).
    if remain < 0 || (remain == 1 && value < 2) {
        return false;
    }
    let shift = 6 * remain as u32;
    let mut low = value << shift;
    let high = low | ((1u32 << shift) - 1);
    if low == 0 {
        // The smallest character this many bytes can encode without being overlong.
        low = match remain {
            2 => 1 << 11,
            3 => 1 << 16,
            _ => low,
        };
    }
    let (positive, hit) = scan_set(elems, pos, |lo, hi| lo <= high && low <= hi);
    // A negated set "matches" a range it does not fully cover; llama.cpp judges the same way.
    positive == hit
}

#[cfg(test)]
mod tests;
