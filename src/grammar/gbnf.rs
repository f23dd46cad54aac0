//! The GBNF parser: grammar text in llama.cpp's syntax → rules of [`Elem`]s.
//!
//! Each rule is a list of alternatives separated by [`Elem::Alt`] and closed by [`Elem::End`].
//! Groups become rules of their own and repetitions are rewritten into recursive helper rules,
//! so the matcher only ever sees sequences of characters, character sets and rule references:
//!
//! ```text
//! S{m,n}  →  S … S (m times) R(n-m)       R(k) ::= S R(k-1) |     R(1) ::= S |
//! S{m,}   →  S … S (m times) R            R ::= S R |
//! ```

use std::collections::HashMap;

use crate::error::{Error, Result};

/// One element of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    /// End of the rule (closes its last alternative).
    End,
    /// End of one alternative; the next one starts after it.
    Alt,
    /// A reference to rule number `.0`.
    RuleRef(u32),
    /// A character set that matches `.0`, or the start of a set continued by
    /// [`Elem::CharAlt`] / [`Elem::RangeUpper`] elements.
    Char(u32),
    /// The start of a negated character set (`[^…]`).
    CharNot(u32),
    /// The inclusive upper end of a range whose lower end is the element before.
    RangeUpper(u32),
    /// Another character (or range start) of the set begun before.
    CharAlt(u32),
    /// `.`: any character.
    Any,
}

impl Elem {
    /// Whether this element ends a sequence (an alternative).
    pub(crate) fn ends_sequence(self) -> bool {
        matches!(self, Elem::End | Elem::Alt)
    }
}

/// Most repetitions one `{m,n}` (or the product of nested ones) may expand to, as in llama.cpp:
/// each optional repetition is a rule of its own.
const MAX_REPETITIONS: u64 = 2000;

/// The parsed rules, with their names (synthesised names for groups and repetitions).
pub(crate) struct Parsed {
    pub rules: Vec<Vec<Elem>>,
    pub names: Vec<String>,
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    /// Rule name → id, for every name defined or referenced so far.
    ids: HashMap<String, u32>,
    names: Vec<String>,
    rules: Vec<Option<Vec<Elem>>>,
    /// Where each rule was first referenced, for an "undefined rule" error.
    first_use: Vec<Option<usize>>,
}

/// Parses GBNF text.
pub(crate) fn parse(src: &str) -> Result<Parsed> {
    let mut p = Parser { src, pos: 0, ids: HashMap::new(), names: Vec::new(), rules: Vec::new(), first_use: Vec::new() };
    p.skip_space(true);
    while p.pos < src.len() {
        p.rule()?;
    }
    let mut rules = Vec::with_capacity(p.rules.len());
    for (id, rule) in p.rules.into_iter().enumerate() {
        match rule {
            Some(rule) => rules.push(rule),
            None => {
                let at = p.first_use.get(id).copied().flatten().unwrap_or(0);
                let name = p.names.get(id).cloned().unwrap_or_default();
                return Err(error_at(src, at, format!("undefined rule `{name}`")));
            }
        }
    }
    Ok(Parsed { rules, names: p.names })
}

/// An [`Error::Grammar`] at byte offset `at` of `src`, with its 1-based line and column
/// (counted in characters).
pub(crate) fn error_at(src: &str, at: usize, message: String) -> Error {
    let at = (0..=at.min(src.len())).rev().find(|&i| src.is_char_boundary(i)).unwrap_or(0);
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Error::Grammar { line, column, message }
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + ahead).copied()
    }

    fn err(&self, message: impl Into<String>) -> Error {
        error_at(self.src, self.pos, message.into())
    }

    /// Skips spaces, tabs and `#` comments, and newlines when `newline_ok`.
    fn skip_space(&mut self, newline_ok: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' => self.pos += 1,
                b'\r' | b'\n' if newline_ok => self.pos += 1,
                b'#' => {
                    while !matches!(self.peek(), None | Some(b'\r' | b'\n')) {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Result<&str> {
        let start = self.pos;
        while self.peek().is_some_and(is_word_char) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("expected a rule name"));
        }
        Ok(&self.src[start..self.pos])
    }

    fn symbol(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        self.rules.push(None);
        self.first_use.push(None);
        id
    }

    /// A new rule id for a group or repetition inside rule `base`.
    fn synthetic(&mut self, base: &str) -> u32 {
        let id = self.names.len() as u32;
        let name = format!("{base}_{id}");
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        self.rules.push(None);
        self.first_use.push(None);
        id
    }

    /// `name ::= alternates` up to the end of its line.
    fn rule(&mut self) -> Result<()> {
        let start = self.pos;
        let name = self.name()?.to_string();
        self.skip_space(false);
        if !self.src[self.pos..].starts_with("::=") {
            return Err(self.err(format!("expected `::=` after rule name `{name}`")));
        }
        self.pos += 3;
        self.skip_space(true);
        let id = self.symbol(&name);
        if self.rules.get(id as usize).is_some_and(Option::is_some) {
            return Err(error_at(self.src, start, format!("rule `{name}` is defined twice")));
        }
        self.alternates(&name, id, false)?;
        match self.peek() {
            Some(b'\r') => self.pos += if self.peek_at(1) == Some(b'\n') { 2 } else { 1 },
            Some(b'\n') => self.pos += 1,
            None => {}
            Some(_) => return Err(self.err("expected the end of the line (or `|`)")),
        }
        self.skip_space(true);
        Ok(())
    }

    fn alternates(&mut self, name: &str, id: u32, nested: bool) -> Result<()> {
        let mut elems = Vec::new();
        self.sequence(name, &mut elems, nested)?;
        while self.peek() == Some(b'|') {
            elems.push(Elem::Alt);
            self.pos += 1;
            self.skip_space(true);
            self.sequence(name, &mut elems, nested)?;
        }
        elems.push(Elem::End);
        if let Some(slot) = self.rules.get_mut(id as usize) {
            *slot = Some(elems);
        }
        Ok(())
    }

    /// One escape or character.
    fn char(&mut self) -> Result<u32> {
        let rest = &self.src[self.pos..];
        let mut chars = rest.chars();
        match chars.next() {
            None => Err(self.err("unexpected end of the grammar")),
            Some('\\') => {
                let (value, len) = match chars.next() {
                    Some('x') => (self.hex(2)?, 4),
                    Some('u') => (self.hex(4)?, 6),
                    Some('U') => (self.hex(8)?, 10),
                    Some('t') => ('\t' as u32, 2),
                    Some('r') => ('\r' as u32, 2),
                    Some('n') => ('\n' as u32, 2),
                    Some(c @ ('\\' | '"' | '[' | ']' | '-')) => (c as u32, 2),
                    _ => return Err(self.err("unknown escape")),
                };
                self.pos += len;
                Ok(value)
            }
            Some(c) => {
                self.pos += c.len_utf8();
                Ok(c as u32)
            }
        }
    }

    /// `n` hex digits after a two-byte `\x`-style prefix.
    fn hex(&self, n: usize) -> Result<u32> {
        let digits = self.src.get(self.pos + 2..self.pos + 2 + n).filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()));
        let digits = digits.ok_or_else(|| self.err(format!("expected {n} hex digits")))?;
        u32::from_str_radix(digits, 16).map_err(|_| self.err(format!("expected {n} hex digits")))
    }

    fn int(&mut self) -> Result<u64> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("expected an integer"));
        }
        self.src[start..self.pos].parse().map_err(|_| error_at(self.src, start, "integer too large".into()))
    }

    fn sequence(&mut self, name: &str, out: &mut Vec<Elem>, nested: bool) -> Result<()> {
        // Start of the last symbol in `out`, for a repetition operator that follows it.
        let mut last: Option<usize> = None;
        // How many copies the repetitions applied to the last symbol already make.
        let mut copies: u64 = 1;
        while let Some(c) = self.peek() {
            if matches!(c, b'"' | b'[' | b'(' | b'.') || is_word_char(c) {
                // A new symbol starts here: a repetition operator after it applies to it alone.
                last = Some(out.len());
                copies = 1;
            }
            match c {
                b'"' => {
                    let open = self.pos;
                    self.pos += 1;
                    while self.peek() != Some(b'"') {
                        if self.peek().is_none() {
                            return Err(error_at(self.src, open, "unterminated string literal (it starts here)".into()));
                        }
                        out.push(Elem::Char(self.char()?));
                    }
                    self.pos += 1;
                    self.skip_space(nested);
                }
                b'[' => {
                    let open = self.pos;
                    self.pos += 1;
                    let negated = self.peek() == Some(b'^');
                    if negated {
                        self.pos += 1;
                    }
                    let start = out.len();
                    while self.peek() != Some(b']') {
                        if self.peek().is_none() {
                            return Err(error_at(self.src, open, "unterminated character class (it starts here)".into()));
                        }
                        let c = self.char()?;
                        out.push(match (out.len() > start, negated) {
                            (true, _) => Elem::CharAlt(c),
                            (false, true) => Elem::CharNot(c),
                            (false, false) => Elem::Char(c),
                        });
                        if self.peek() == Some(b'-') && self.peek_at(1) != Some(b']') {
                            self.pos += 1;
                            out.push(Elem::RangeUpper(self.char()?));
                        }
                    }
                    if out.len() == start {
                        // `[]` matches nothing and `[^]` anything: say so rather than guess.
                        return Err(self.err("empty character class"));
                    }
                    self.pos += 1;
                    self.skip_space(nested);
                }
                b'<' | b'!' => return Err(self.err("token references (`<[id]>`, `<token>`) are not supported")),
                c if is_word_char(c) => {
                    let at = self.pos;
                    let reference = self.name()?.to_string();
                    let id = self.symbol(&reference);
                    if let Some(first) = self.first_use.get_mut(id as usize) {
                        first.get_or_insert(at);
                    }
                    self.skip_space(nested);
                    out.push(Elem::RuleRef(id));
                }
                b'(' => {
                    self.pos += 1;
                    self.skip_space(true);
                    let id = self.synthetic(name);
                    self.alternates(name, id, true)?;
                    if self.peek() != Some(b')') {
                        return Err(self.err("expected `)`"));
                    }
                    self.pos += 1;
                    self.skip_space(nested);
                    out.push(Elem::RuleRef(id));
                }
                b'.' => {
                    self.pos += 1;
                    self.skip_space(nested);
                    out.push(Elem::Any);
                }
                b'*' | b'+' | b'?' => {
                    let (min, max) = match c {
                        b'*' => (0, None),
                        b'+' => (1, None),
                        _ => (0, Some(1)),
                    };
                    let Some(from) = last else {
                        return Err(self.err(format!("`{}` without an item before it", c as char)));
                    };
                    self.pos += 1;
                    self.skip_space(nested);
                    self.repeat(name, out, from, min, max, &mut copies)?;
                }
                b'{' => {
                    let Some(from) = last else {
                        return Err(self.err("`{` without an item before it"));
                    };
                    self.pos += 1;
                    self.skip_space(nested);
                    let min = self.int()?;
                    self.skip_space(nested);
                    let max = match self.peek() {
                        Some(b'}') => Some(min),
                        Some(b',') => {
                            self.pos += 1;
                            self.skip_space(nested);
                            if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                                let max = self.int()?;
                                self.skip_space(nested);
                                Some(max)
                            } else {
                                None
                            }
                        }
                        _ => return Err(self.err("expected `,` or `}`")),
                    };
                    if self.peek() != Some(b'}') {
                        return Err(self.err("expected `}`"));
                    }
                    if max.is_some_and(|max| max < min) {
                        return Err(self.err(format!("repetition {{{min},{}}} has its maximum below its minimum", max.unwrap_or(0))));
                    }
                    self.pos += 1;
                    self.skip_space(nested);
                    self.repeat(name, out, from, min, max, &mut copies)?;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Rewrites the symbol at `out[from..]` into `min` copies followed by the optional ones.
    fn repeat(&mut self, name: &str, out: &mut Vec<Elem>, from: usize, min: u64, max: Option<u64>, copies: &mut u64) -> Result<()> {
        let times = match max {
            Some(max) if max > 0 => max,
            _ => min.max(1),
        };
        *copies = copies.saturating_mul(times);
        if *copies > MAX_REPETITIONS || max.is_some_and(|m| m > MAX_REPETITIONS) {
            return Err(self.err(format!("repetitions expand to more than {MAX_REPETITIONS} copies")));
        }
        let item: Vec<Elem> = out.get(from..).unwrap_or_default().to_vec();
        if min == 0 {
            out.truncate(from);
        } else {
            for _ in 1..min {
                out.extend_from_slice(&item);
            }
        }
        // The optional copies: one self-recursive rule when unbounded, else a chain of them.
        let optional = match max {
            None => 1,
            Some(max) => max - min,
        };
        let mut previous = None;
        for i in 0..optional {
            let id = self.synthetic(name);
            let mut rule = item.clone();
            match (max, previous) {
                (None, _) => rule.push(Elem::RuleRef(id)),
                (Some(_), Some(prev)) if i > 0 => rule.push(Elem::RuleRef(prev)),
                _ => {}
            }
            rule.push(Elem::Alt);
            rule.push(Elem::End);
            if let Some(slot) = self.rules.get_mut(id as usize) {
                *slot = Some(rule);
            }
            previous = Some(id);
        }
        if let Some(id) = previous {
            out.push(Elem::RuleRef(id));
        }
        Ok(())
    }
}
