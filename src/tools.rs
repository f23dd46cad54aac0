//! Tools in, tool calls out: function definitions in OpenAI's shape, the `tool_choice` option,
//! and the parser that finds the calls a model writes in the text it generates.
//!
//! Each model family writes calls in the markup its chat template teaches; the format is read
//! from the template as llama.cpp's chat parser detects it ([`ToolFormat::detect`]). The parser
//! is streaming: text is pushed as it is decoded, and it gives back the text that is certainly
//! not markup and each call as soon as its markup closes. Markup that never closes, or whose
//! call does not parse, comes back as text, so nothing the model wrote is lost.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Longest tool name accepted.
const MAX_NAME: usize = 128;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ToolJson")]
pub struct Tool {
    /// The function's name (ASCII letters, digits, `_`, `-` and `.`).
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: String,
    /// Its parameters as a JSON Schema object (`{"type": "object", "properties": …}`).
    #[serde(default = "empty_parameters")]
    pub parameters: Value,
}

/// A tool as JSON: OpenAI's `{"type": "function", "function": {…}}`, or the function alone.
#[derive(Deserialize)]
#[serde(untagged)]
enum ToolJson {
    Wrapped {
        #[serde(rename = "type")]
        _kind: Option<String>,
        function: Function,
    },
    Bare(Function),
}

#[derive(Deserialize)]
struct Function {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "empty_parameters")]
    parameters: Value,
}

impl From<ToolJson> for Tool {
    fn from(json: ToolJson) -> Tool {
        let (ToolJson::Wrapped { function: f, .. } | ToolJson::Bare(f)) = json;
        Tool { name: f.name, description: f.description, parameters: f.parameters }
    }
}

fn empty_parameters() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

impl Tool {
    /// A tool named `name` described by `description`, taking `parameters` (a JSON Schema).
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Tool {
        Tool { name: name.into(), description: description.into(), parameters }
    }

    /// The tool as chat templates receive it (and as OpenAI's API takes it):
    /// `{"type": "function", "function": {"name", "description", "parameters"}}`.
    pub fn to_template_value(&self) -> Value {
        serde_json::json!({
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        })
    }

    /// The JSON Schema type of parameter `key`, when the parameters declare one.
    fn parameter_type(&self, key: &str) -> Option<&str> {
        let ty = self.parameters.get("properties")?.get(key)?.get("type")?;
        match ty {
            Value::String(s) => Some(s),
            // ["integer", "null"]: the first type that is not null.
            Value::Array(types) => types.iter().filter_map(Value::as_str).find(|t| *t != "null"),
            _ => None,
        }
    }
}

/// Checks a list of tools: names well formed and distinct, parameters a JSON object.
///
/// # Errors
/// [`Error::InvalidTools`] saying which tool is wrong and why.
pub fn validate_tools(tools: &[Tool]) -> Result<()> {
    for (i, tool) in tools.iter().enumerate() {
        let bad = |reason: String| Err(Error::InvalidTools { reason: format!("tool {i} (`{}`): {reason}", tool.name) });
        if tool.name.is_empty() || tool.name.len() > MAX_NAME {
            return bad(format!("a name must be 1 to {MAX_NAME} characters long"));
        }
        if let Some(c) = tool.name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
            return bad(format!("{c:?} is not allowed in a name (letters, digits, `_`, `-`, `.`)"));
        }
        if !tool.parameters.is_object() {
            return bad("`parameters` must be a JSON Schema object".into());
        }
        if tools[..i].iter().any(|t| t.name == tool.name) {
            return bad("two tools have this name".into());
        }
    }
    Ok(())
}

/// Parses tool definitions from JSON: an array of OpenAI-shaped tools
/// (`{"type": "function", "function": {"name", "description", "parameters"}}`, or the
/// function objects alone).
///
/// # Errors
/// [`Error::InvalidTools`] saying what is malformed.
pub fn parse_tools(json: &str) -> Result<Vec<Tool>> {
    let tools: Vec<Tool> = serde_json::from_str(json).map_err(|e| Error::InvalidTools { reason: e.to_string() })?;
    validate_tools(&tools)?;
    Ok(tools)
}

/// Whether and which tools the model is to call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// The model decides (the default).
    #[default]
    Auto,
    /// The model is not offered the tools and its text is not searched for calls.
    None,
    /// The model must call at least one tool. Needs grammar-constrained sampling.
    Required,
    /// The model must call this function. Needs grammar-constrained sampling.
    Function(String),
}

impl ToolChoice {
    /// Parses `auto`, `none`, `required`, or any other text as a function's name.
    pub fn parse(text: &str) -> ToolChoice {
        match text {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            name => ToolChoice::Function(name.to_string()),
        }
    }

    /// Checks the choice against the tools offered.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a named function that is not among `tools`, or
    /// `required` without tools; [`Error::ToolChoiceNeedsGrammar`] for `required` and named
    /// choices, which only grammar-constrained sampling can enforce.
    pub fn validate(&self, tools: &[Tool]) -> Result<()> {
        match self {
            ToolChoice::Auto | ToolChoice::None => Ok(()),
            ToolChoice::Required if tools.is_empty() => Err(Error::InvalidParameter { name: "tool_choice", reason: "`required` needs at least one tool".into() }),
            ToolChoice::Function(name) if !tools.iter().any(|t| &t.name == name) => {
                Err(Error::InvalidParameter { name: "tool_choice", reason: format!("no tool is named `{name}`") })
            }
            ToolChoice::Required => Err(Error::ToolChoiceNeedsGrammar { choice: "required".into() }),
            ToolChoice::Function(name) => Err(Error::ToolChoiceNeedsGrammar { choice: format!("the function `{name}`") }),
        }
    }
}

/// A tool call in a conversation: what an assistant message carries in `tool_calls`, in
/// OpenAI's shape (`{"id", "type": "function", "function": {"name", "arguments"}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id; the `tool` message answering it carries it as `tool_call_id`.
    #[serde(default)]
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function called.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

/// The function of a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object as a string (an object given here is kept as its text).
    #[serde(deserialize_with = "string_or_json")]
    pub arguments: String,
}

fn string_or_json<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

impl ToolCall {
    /// A call of `name` with `arguments` (a JSON object as text).
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: impl Into<String>) -> ToolCall {
        ToolCall { id: id.into(), kind: function_type(), function: FunctionCall { name: name.into(), arguments: arguments.into() } }
    }

    /// The call as chat templates receive it: the arguments as a JSON object when they parse
    /// as one (templates such as Qwen2.5's write them with `tojson`, and Qwen3-Coder's iterate
    /// over them), as text otherwise.
    pub fn to_template_value(&self) -> Value {
        let arguments = serde_json::from_str::<Value>(&self.function.arguments).ok().filter(Value::is_object);
        serde_json::json!({
            "id": self.id,
            "type": self.kind,
            "function": {"name": self.function.name, "arguments": arguments.unwrap_or_else(|| Value::String(self.function.arguments.clone()))},
        })
    }
}

/// How a model family writes its tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Hermes 2 Pro, Qwen2.5: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`.
    Hermes,
    /// Qwen3-Coder: `<tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></tool_call>`,
    /// the values typed by the tool's schema.
    Qwen3Coder,
    /// Kimi K2: `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX
    /// <|tool_call_argument_begin|>{…}<|tool_call_end|><|tool_calls_section_end|>`.
    KimiK2,
    /// Llama 3.x: the whole reply is `{"name": …, "parameters": {…}}` (optionally after
    /// `<|python_tag|>`; several calls separated by `;`).
    Llama3Json,
    /// Any other template: the whole reply is `{"tool_call": {"name", "arguments"}}` or
    /// `{"tool_calls": [...]}`; the tools are described to the model in a system message.
    Generic,
}

impl ToolFormat {
    /// The format a chat template teaches, recognised by the markup it writes (as llama.cpp
    /// recognises it); [`ToolFormat::Generic`] when it shows none.
    pub fn detect(template: &str) -> ToolFormat {
        // Kimi K2's first template declares tools without rendering calls back.
        if template.contains("<|tool_calls_section_begin|>") || template.contains("<|im_system|>tool_declare<|im_middle|>") {
            ToolFormat::KimiK2
        } else if template.contains("<function=") && template.contains("<parameter=") {
            ToolFormat::Qwen3Coder
        } else if template.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if template.contains("<|start_header_id|>") && (template.contains("ipython") || template.contains("<|python_tag|>")) {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Generic
        }
    }

    /// How blocks of calls open, for the formats whose calls can sit among text.
    fn openers(self) -> &'static [Opener] {
        const HERMES: &[Opener] = &[Opener::Tag { open: "<tool_call>", close: "</tool_call>" }, Opener::Fence, Opener::Bare];
        const QWEN3_CODER: &[Opener] = &[Opener::Tag { open: "<tool_call>", close: "</tool_call>" }];
        const KIMI_K2: &[Opener] = &[Opener::Tag { open: "<|tool_calls_section_begin|>", close: "<|tool_calls_section_end|>" }];
        match self {
            // Small models often leave the tags out, or put the call in a Markdown code block,
            // as llama.cpp's Hermes parser allows: those calls must name a known tool.
            ToolFormat::Hermes => HERMES,
            ToolFormat::Qwen3Coder => QWEN3_CODER,
            ToolFormat::KimiK2 => KIMI_K2,
            ToolFormat::Llama3Json | ToolFormat::Generic => &[],
        }
    }

    /// Token texts of the format's markup: when a model's vocabulary has them as control
    /// tokens, the generator writes them out for the parser instead of dropping them.
    pub fn markup_tokens(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes | ToolFormat::Qwen3Coder => &["<tool_call>", "</tool_call>"],
            ToolFormat::KimiK2 => &[
                "<|tool_calls_section_begin|>",
                "<|tool_calls_section_end|>",
                "<|tool_call_begin|>",
                "<|tool_call_argument_begin|>",
                "<|tool_call_end|>",
            ],
            ToolFormat::Llama3Json => &["<|python_tag|>"],
            ToolFormat::Generic => &[],
        }
    }
}

/// What the parser gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Text that is not part of a call.
    Text(String),
    /// A complete call; `id` is the model's own when the format carries one (Kimi K2).
    Call {
        /// The model's id for the call, if it wrote one.
        id: Option<String>,
        /// The function's name.
        name: String,
        /// The arguments, a JSON object as compact text.
        arguments: String,
    },
}

/// How a block of calls opens, and so where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opener {
    /// A tag, closed by its closing tag.
    Tag {
        /// The opening tag.
        open: &'static str,
        /// The closing tag.
        close: &'static str,
    },
    /// A Markdown code block (`` ```json ``) around one JSON call, closed by `` ``` ``.
    Fence,
    /// A bare JSON object that starts with `"name"`, closed where its braces balance.
    Bare,
}

/// A piece of an opener's pattern.
enum Part {
    /// This text.
    Lit(&'static str),
    /// This text or nothing.
    Opt(&'static str),
    /// Any whitespace, or none.
    Ws,
}

/// How far text matches an opener.
#[derive(Debug, PartialEq, Eq)]
enum Match {
    /// The text starts with the opener; the block's body starts at this byte.
    Full(usize),
    /// The text is the start of the opener: more text decides.
    Partial,
    /// The text does not start with the opener.
    No,
}

impl Opener {
    fn parts(self) -> &'static [Part] {
        const BARE: &[Part] = &[Part::Lit("{"), Part::Ws, Part::Lit("\"name\"")];
        const FENCE: &[Part] = &[Part::Lit("```"), Part::Opt("json"), Part::Ws, Part::Lit("{"), Part::Ws, Part::Lit("\"name\"")];
        match self {
            Opener::Tag { .. } => &[],
            Opener::Fence => FENCE,
            Opener::Bare => BARE,
        }
    }

    /// Whether `text` starts with this opener.
    fn matches(self, text: &str) -> Match {
        if let Opener::Tag { open, .. } = self {
            return match text {
                t if t.starts_with(open) => Match::Full(open.len()),
                t if open.starts_with(t) => Match::Partial,
                _ => Match::No,
            };
        }
        let mut at = 0;
        for part in self.parts() {
            let rest = &text[at..];
            match part {
                Part::Lit(lit) | Part::Opt(lit) if rest.starts_with(lit) => at += lit.len(),
                Part::Lit(lit) | Part::Opt(lit) if lit.starts_with(rest) => return Match::Partial,
                Part::Lit(_) => return Match::No,
                Part::Opt(_) => {}
                Part::Ws => at += rest.len() - rest.trim_start().len(),
            }
        }
        // The body is the JSON object: it starts at the opener's brace.
        match self {
            Opener::Fence => Match::Full(text.find('{').unwrap_or(0)),
            _ => Match::Full(0),
        }
    }

    /// Where the block whose body is `body` ends: the body's length and the closing markup's.
    fn end(self, body: &str) -> Option<(usize, usize)> {
        match self {
            Opener::Tag { close, .. } => body.find(close).map(|at| (at, close.len())),
            Opener::Fence => body.find("```").map(|at| (at, 3)),
            Opener::Bare => json_object_end(body).map(|at| (at, 0)),
        }
    }
}

/// The length of the JSON object `text` starts with, once its braces balance (strings and
/// their escapes skipped).
fn json_object_end(text: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, b) in text.bytes().enumerate() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => depth += 1,
            (false, _, b'}' | b']') => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// An open block of calls.
#[derive(Debug, Clone)]
struct Block {
    opener: Opener,
    /// Everything since the block opened, its opening markup included.
    raw: String,
    /// Where its body starts in `raw`.
    body: usize,
}

/// Finds tool calls in generated text as it streams. Push text with [`ToolCallParser::push`]
/// and, at the end, call [`ToolCallParser::finish`].
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    format: ToolFormat,
    tools: Vec<Tool>,
    /// Text not yet given back: a possible start of markup, or whitespace that is dropped if
    /// a call follows it.
    pending: String,
    /// The block of calls open now.
    block: Option<Block>,
    /// For the whole-reply formats: the reply looks like JSON so far, so all of it is held.
    holding_all: bool,
    /// Whitespace that stood before the open block of calls: text again if the block is not
    /// a call.
    gap: String,
    /// The last thing found was a call, and no text has followed it yet.
    after_call: bool,
    /// For the whole-reply formats: the reply has started as text.
    started: bool,
    /// Calls given back so far.
    calls: usize,
}

impl ToolCallParser {
    /// A parser for `format`; `tools` type the values of [`ToolFormat::Qwen3Coder`]
    /// parameters and name the functions that calls without markup may call.
    pub fn new(format: ToolFormat, tools: Vec<Tool>) -> ToolCallParser {
        ToolCallParser { format, tools, pending: String::new(), block: None, holding_all: false, gap: String::new(), after_call: false, started: false, calls: 0 }
    }

    /// The format parsed.
    pub fn format(&self) -> ToolFormat {
        self.format
    }

    /// Calls given back so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Takes the next piece of generated text; returns what is certain so far.
    pub fn push(&mut self, text: &str) -> Vec<Parsed> {
        let mut out = Vec::new();
        if self.format.openers().is_empty() {
            self.scan_whole(text, &mut out);
        } else {
            self.pending.push_str(text);
            self.scan_blocks(&mut out);
        }
        self.count(&out);
        out
    }

    /// Ends the text: what was held back comes out, markup that never closed as text.
    pub fn finish(&mut self) -> Vec<Parsed> {
        let mut out = Vec::new();
        let pending = std::mem::take(&mut self.pending);
        if let Some(block) = self.block.take() {
            push_text(&mut out, format!("{}{}{pending}", std::mem::take(&mut self.gap), block.raw));
        } else if self.holding_all {
            match parse_whole(self.format, &pending, &self.tools) {
                Some(calls) if !calls.is_empty() => out.extend(calls),
                _ => push_text(&mut out, pending),
            }
        } else if self.after_call {
            push_text(&mut out, pending.trim_start().to_string());
        } else {
            push_text(&mut out, pending);
        }
        self.count(&out);
        out
    }

    fn count(&mut self, out: &[Parsed]) {
        self.calls += out.iter().filter(|p| matches!(p, Parsed::Call { .. })).count();
    }

    /// The formats whose calls sit among text: text until a block of calls opens, the block
    /// until it closes. Whitespace between text and calls, or between calls, is not text: it
    /// is held until something else follows it, and dropped when a call does.
    fn scan_blocks(&mut self, out: &mut Vec<Parsed>) {
        loop {
            if let Some(block) = &mut self.block {
                block.raw.push_str(&std::mem::take(&mut self.pending));
                let Some((len, close)) = block.opener.end(&block.raw[block.body..]) else { return };
                let end = block.body + len;
                self.pending = block.raw[end + close..].to_string();
                let Some(block) = self.block.take() else { return };
                let gap = std::mem::take(&mut self.gap);
                match self.parse_block(block.opener, &block.raw[block.body..end]) {
                    Some(calls) if !calls.is_empty() => {
                        out.extend(calls);
                        self.after_call = true;
                    }
                    _ => {
                        push_text(out, format!("{gap}{}", &block.raw[..end + close]));
                        self.after_call = false;
                    }
                }
                continue;
            }
            let (at, found) = self.find_opener();
            let before = &self.pending[..at];
            let before = if self.after_call { before.trim_start() } else { before };
            let text = before.trim_end();
            let gap = before[text.len()..].to_string();
            if !text.is_empty() {
                self.after_call = false;
            }
            push_text(out, text.to_string());
            match found {
                Some((opener, body)) => {
                    self.gap = gap;
                    self.block = Some(Block { opener, raw: self.pending[at..].to_string(), body });
                    self.pending.clear();
                }
                None => {
                    // Hold the whitespace and a possible start of markup.
                    self.pending = format!("{gap}{}", &self.pending[at..]);
                    return;
                }
            }
        }
    }

    /// The first place in the pending text where a block opens (with its opener and where
    /// its body starts), or could open once more text comes (with `None`); else its end.
    fn find_opener(&self) -> (usize, Option<(Opener, usize)>) {
        let text = &self.pending;
        for (at, c) in text.char_indices() {
            if !matches!(c, '<' | '`' | '{') {
                continue;
            }
            let mut partial = false;
            for &opener in self.format.openers() {
                match opener.matches(&text[at..]) {
                    Match::Full(body) => return (at, Some((opener, body))),
                    Match::Partial => partial = true,
                    Match::No => {}
                }
            }
            if partial {
                return (at, None);
            }
        }
        (text.len(), None)
    }

    /// The calls in one closed block, or `None` when it is malformed. Calls without markup
    /// must name a known tool, so that JSON that merely looks like a call stays text.
    fn parse_block(&self, opener: Opener, body: &str) -> Option<Vec<Parsed>> {
        let calls = match (opener, self.format) {
            (Opener::Tag { .. }, ToolFormat::Qwen3Coder) => return parse_xml_calls(body, &self.tools),
            (Opener::Tag { .. }, ToolFormat::KimiK2) => return parse_kimi_calls(body),
            (Opener::Tag { .. }, _) => return parse_json_call(body.trim(), &["arguments", "parameters"]).map(|c| vec![c]),
            _ => vec![parse_json_call(body.trim(), &["arguments", "parameters"])?],
        };
        calls.iter().all(|c| matches!(c, Parsed::Call { name, .. } if self.tools.iter().any(|t| &t.name == name))).then_some(calls)
    }

    /// The whole-reply formats: a reply that starts like JSON is held to the end.
    fn scan_whole(&mut self, text: &str, out: &mut Vec<Parsed>) {
        if self.holding_all {
            self.pending.push_str(text);
            return;
        }
        if self.started {
            push_text(out, text.to_string());
            return;
        }
        self.pending.push_str(text);
        let start = self.pending.trim_start();
        if start.is_empty() {
            return;
        }
        let tag = "<|python_tag|>";
        if start.starts_with('{') || start.starts_with('[') || start.starts_with(tag) {
            self.holding_all = true;
        } else if !(tag.starts_with(start) && self.format == ToolFormat::Llama3Json) {
            self.started = true;
            push_text(out, std::mem::take(&mut self.pending));
        }
    }
}

fn push_text(out: &mut Vec<Parsed>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Parsed::Text(last)) = out.last_mut() {
        last.push_str(&text);
    } else {
        out.push(Parsed::Text(text));
    }
}

/// `{"name": NAME, "arguments": {…}}` (or the other key in `argument_keys`); arguments given
/// as a string holding a JSON object are accepted too.
fn parse_json_call(text: &str, argument_keys: &[&str]) -> Option<Parsed> {
    let value: Value = serde_json::from_str(text).ok()?;
    json_call(&value, argument_keys)
}

fn json_call(value: &Value, argument_keys: &[&str]) -> Option<Parsed> {
    let object = value.as_object()?;
    let name = object.get("name")?.as_str()?.to_string();
    let arguments = match argument_keys.iter().find_map(|k| object.get(*k)) {
        None => Value::Object(Map::new()),
        Some(Value::String(text)) => serde_json::from_str::<Value>(text).ok()?,
        Some(other) => other.clone(),
    };
    if name.is_empty() || !arguments.is_object() {
        return None;
    }
    Some(Parsed::Call { id: None, name, arguments: arguments.to_string() })
}

/// Qwen3-Coder's blocks: one or more `<function=NAME>` elements, each with
/// `<parameter=KEY>VALUE</parameter>` children.
fn parse_xml_calls(body: &str, tools: &[Tool]) -> Option<Vec<Parsed>> {
    let mut calls = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (name, inner, after) = element(rest, "<function=", ">", "</function>")?;
        let name = name.trim();
        let tool = tools.iter().find(|t| t.name == name);
        let mut arguments = Map::new();
        let mut params = inner.trim();
        while !params.is_empty() {
            let (key, value, after) = element(params, "<parameter=", ">", "</parameter>")?;
            let value = value.strip_prefix('\n').unwrap_or(value);
            let value = value.strip_suffix('\n').unwrap_or(value);
            let ty = tool.and_then(|t| t.parameter_type(key.trim()));
            arguments.insert(key.trim().to_string(), typed_value(value, ty));
            params = after.trim();
        }
        if name.is_empty() {
            return None;
        }
        calls.push(Parsed::Call { id: None, name: name.to_string(), arguments: Value::Object(arguments).to_string() });
        rest = after.trim();
    }
    Some(calls)
}

/// `text` as `OPEN head SEPARATOR inner CLOSE rest`: (head, inner, rest).
fn element<'t>(text: &'t str, open: &str, separator: &str, close: &str) -> Option<(&'t str, &'t str, &'t str)> {
    let (head, after) = text.strip_prefix(open)?.split_once(separator)?;
    let (inner, rest) = after.split_once(close)?;
    Some((head, inner, rest))
}

/// A parameter's text as the JSON value its schema type says; text that does not fit the
/// type stays a string. Without a type, text that is JSON is taken as JSON.
fn typed_value(text: &str, ty: Option<&str>) -> Value {
    let json = || serde_json::from_str::<Value>(text.trim()).ok();
    let parsed = match ty {
        Some("string") => None,
        Some("integer") => json().filter(|v| v.is_i64() || v.is_u64()),
        Some("number") => json().filter(Value::is_number),
        Some("boolean") => match text.trim() {
            "true" | "True" => Some(Value::Bool(true)),
            "false" | "False" => Some(Value::Bool(false)),
            _ => None,
        },
        Some("object") => json().filter(Value::is_object),
        Some("array") => json().filter(Value::is_array),
        Some("null") => json().filter(Value::is_null),
        _ => json(),
    };
    parsed.unwrap_or_else(|| Value::String(text.to_string()))
}

/// Kimi K2's section: `<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{…}
/// <|tool_call_end|>`, repeated.
fn parse_kimi_calls(body: &str) -> Option<Vec<Parsed>> {
    let mut calls = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (id, arguments, after) = element(rest, "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>")?;
        let id = id.trim();
        let name = id.strip_prefix("functions.").unwrap_or(id);
        let name = name.rsplit_once(':').map_or(name, |(name, index)| if index.bytes().all(|b| b.is_ascii_digit()) { name } else { id });
        let arguments: Value = serde_json::from_str(arguments.trim()).ok()?;
        if name.is_empty() || !arguments.is_object() {
            return None;
        }
        calls.push(Parsed::Call { id: Some(id.to_string()), name: name.to_string(), arguments: arguments.to_string() });
        rest = after.trim();
    }
    Some(calls)
}

/// A whole reply that is one or more calls: Llama 3.x's `{"name", "parameters"}` objects
/// (after `<|python_tag|>`, one or several separated by `;`, or an array), or the generic
/// `{"tool_call": …}` / `{"tool_calls": [...]}`. Only functions among `tools` count, so that a
/// reply that merely is JSON stays text.
fn parse_whole(format: ToolFormat, text: &str, tools: &[Tool]) -> Option<Vec<Parsed>> {
    let text = text.trim();
    let text = text.strip_prefix("<|python_tag|>").unwrap_or(text).trim();
    let known = |call: &Parsed| matches!(call, Parsed::Call { name, .. } if tools.iter().any(|t| &t.name == name));
    let calls: Vec<Parsed> = match format {
        ToolFormat::Llama3Json => {
            let values: Vec<Value> = match serde_json::from_str::<Value>(text) {
                Ok(Value::Array(items)) => items,
                Ok(value) => vec![value],
                Err(_) => text.split(';').map(|part| serde_json::from_str(part.trim()).ok()).collect::<Option<_>>()?,
            };
            values.iter().map(|v| json_call(v, &["parameters", "arguments"])).collect::<Option<_>>()?
        }
        _ => {
            let value: Value = serde_json::from_str(text).ok()?;
            let list = match (value.get("tool_calls"), value.get("tool_call")) {
                (Some(Value::Array(items)), _) => items.clone(),
                (_, Some(one)) => vec![one.clone()],
                _ => return None,
            };
            list.iter().map(|v| json_call(v, &["arguments", "parameters"])).collect::<Option<_>>()?
        }
    };
    calls.iter().all(known).then_some(calls)
}

/// The system message that describes `tools` to a model whose template cannot
/// ([`ToolFormat::Generic`]), and the JSON reply that calls one.
pub fn generic_system_prompt(tools: &[Tool]) -> String {
    let list: Vec<String> = tools.iter().map(|t| t.to_template_value().to_string()).collect();
    format!(
        "You can call these functions:\n{}\n\nTo call one or more of them, reply with JSON alone: \
         {{\"tool_calls\": [{{\"name\": \"<function name>\", \"arguments\": {{<arguments>}}}}]}}. \
         Otherwise answer in plain text.",
        list.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather() -> Vec<Tool> {
        vec![
            Tool::new("get_weather", "Weather in a city", json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}, "hours": {"type": "array"}}})),
            Tool::new("search", "Search the web", json!({"type": "object", "properties": {"query": {"type": "string"}}})),
        ]
    }

    /// Runs `text` through a parser in pieces cut at `cuts`, merging adjacent texts.
    fn run(format: ToolFormat, text: &str, cuts: &[usize]) -> Vec<Parsed> {
        let mut parser = ToolCallParser::new(format, weather());
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([text.len()].iter()) {
            if cut < from || !text.is_char_boundary(cut) {
                continue;
            }
            for p in parser.push(&text[from..cut]) {
                merge(&mut out, p);
            }
            from = cut;
        }
        for p in parser.finish() {
            merge(&mut out, p);
        }
        out
    }

    fn merge(out: &mut Vec<Parsed>, p: Parsed) {
        match (out.last_mut(), p) {
            (Some(Parsed::Text(last)), Parsed::Text(t)) => last.push_str(&t),
            (_, p) => out.push(p),
        }
    }

    fn call(name: &str, arguments: Value) -> Parsed {
        Parsed::Call { id: None, name: name.into(), arguments: arguments.to_string() }
    }

    /// The same result whole, cut at every byte, and cut at every pair of bytes near markup.
    fn check(format: ToolFormat, text: &str, want: &[Parsed]) {
        assert_eq!(run(format, text, &[]), want, "whole: {text:?}");
        for cut in 0..=text.len() {
            assert_eq!(run(format, text, &[cut]), want, "cut at {cut}: {text:?}");
        }
        let every: Vec<usize> = (0..=text.len()).collect();
        assert_eq!(run(format, text, &every), want, "byte by byte: {text:?}");
    }

    fn text(t: &str) -> Parsed {
        Parsed::Text(t.into())
    }

    #[test]
    fn hermes_calls_are_found_around_text() {
        let reply = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"search\", \"arguments\": \"{\\\"query\\\": \\\"été\\\"}\"}\n</tool_call>";
        check(ToolFormat::Hermes, reply, &[text("Let me look."), call("get_weather", json!({"city": "Paris"})), call("search", json!({"query": "été"}))]);
        check(ToolFormat::Hermes, "<tool_call>{\"name\":\"search\"}</tool_call> done", &[call("search", json!({})), text("done")]);
        check(ToolFormat::Hermes, "a < b and <tool but no call", &[text("a < b and <tool but no call")]);
    }

    #[test]
    fn hermes_calls_without_tags_name_known_tools() {
        // What Qwen2.5-Coder-0.5B writes: the JSON alone, or in a Markdown code block.
        check(ToolFormat::Hermes, "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}", &[call("get_weather", json!({"city": "Paris"}))]);
        check(
            ToolFormat::Hermes,
            "Sure:\n```json\n{\n  \"name\": \"search\",\n  \"arguments\": {\"query\": \"a}b\\\"{\"}\n}\n```\nThen {\"name\": \"get_weather\", \"arguments\": {}}",
            &[text("Sure:"), call("search", json!({"query": "a}b\"{"})), text("Then"), call("get_weather", json!({}))],
        );
        // JSON that names no known tool, or other JSON and code, stays text.
        for plain in ["{\"name\": \"Ada\", \"age\": 36}", "```json\n{\"name\": \"x\"}\n```", "fn f() { {} }", "```rust\nlet x = 1;\n```", "{\"name\": \"search\""] {
            check(ToolFormat::Hermes, plain, &[text(plain)]);
        }
    }

    #[test]
    fn malformed_hermes_calls_come_back_as_text() {
        let unterminated = "Sure <tool_call>{\"name\": \"search\", \"arguments\": {}}";
        check(ToolFormat::Hermes, unterminated, &[text(unterminated)]);
        let bad_json = "<tool_call>{\"name\": \"search\", \"arguments\": {</tool_call> after";
        check(ToolFormat::Hermes, bad_json, &[text("<tool_call>{\"name\": \"search\", \"arguments\": {</tool_call> after")]);
        check(ToolFormat::Hermes, "<tool_call>[1, 2]</tool_call>", &[text("<tool_call>[1, 2]</tool_call>")]);
        check(ToolFormat::Hermes, "<tool_call>{\"name\": \"x\", \"arguments\": 3}</tool_call>", &[text("<tool_call>{\"name\": \"x\", \"arguments\": 3}</tool_call>")]);
    }

    #[test]
    fn qwen3_coder_parameters_are_typed_by_the_schema() {
        let reply = "I'll check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n<parameter=hours>\n[1, 2]\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=search>\n<parameter=query>\n42\n</parameter>\n</function>\n</tool_call>";
        check(
            ToolFormat::Qwen3Coder,
            reply,
            &[text("I'll check."), call("get_weather", json!({"city": "New York", "days": 3, "metric": true, "hours": [1, 2]})), call("search", json!({"query": "42"}))],
        );
        // A value that does not fit its type stays a string; an unknown tool's values are JSON when they parse.
        check(ToolFormat::Qwen3Coder, "<tool_call><function=get_weather><parameter=days>soon</parameter></function></tool_call>", &[call("get_weather", json!({"days": "soon"}))]);
        check(ToolFormat::Qwen3Coder, "<tool_call><function=other><parameter=n>\n7\n</parameter><parameter=s>hi</parameter></function></tool_call>", &[call("other", json!({"n": 7, "s": "hi"}))]);
        // Two functions in one block.
        check(ToolFormat::Qwen3Coder, "<tool_call><function=search></function><function=search><parameter=query>x</parameter></function></tool_call>", &[call("search", json!({})), call("search", json!({"query": "x"}))]);
    }

    #[test]
    fn malformed_qwen3_coder_calls_come_back_as_text() {
        for bad in [
            "<tool_call><function=search><parameter=query>x</function></tool_call>",
            "<tool_call><function=search><parameter=query>x</parameter></tool_call>",
            "<tool_call>{\"name\": \"search\"}</tool_call>",
            "<tool_call><function=search>",
        ] {
            check(ToolFormat::Qwen3Coder, bad, &[text(bad)]);
        }
    }

    #[test]
    fn kimi_k2_calls_keep_their_ids() {
        let reply = "Checking.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Paris\"}<|tool_call_end|><|tool_call_begin|>functions.search:1<|tool_call_argument_begin|>{\"query\": \"x\"}<|tool_call_end|><|tool_calls_section_end|>";
        let want = [
            text("Checking."),
            Parsed::Call { id: Some("functions.get_weather:0".into()), name: "get_weather".into(), arguments: json!({"city": "Paris"}).to_string() },
            Parsed::Call { id: Some("functions.search:1".into()), name: "search".into(), arguments: json!({"query": "x"}).to_string() },
        ];
        check(ToolFormat::KimiK2, reply, &want);
        for bad in [
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.search:0<|tool_call_argument_begin|>{\"query\"<|tool_call_end|><|tool_calls_section_end|>",
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.search:0<|tool_call_argument_begin|>{}<|tool_calls_section_end|>",
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.search:0<|tool_call_argument_begin|>{}<|tool_call_end|>",
        ] {
            check(ToolFormat::KimiK2, bad, &[text(bad)]);
        }
    }

    #[test]
    fn whole_reply_json_calls() {
        check(ToolFormat::Llama3Json, "{\"name\": \"search\", \"parameters\": {\"query\": \"x\"}}", &[call("search", json!({"query": "x"}))]);
        check(
            ToolFormat::Llama3Json,
            "<|python_tag|>{\"name\": \"search\", \"parameters\": {}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
            &[call("search", json!({})), call("get_weather", json!({"city": "Oslo"}))],
        );
        // JSON that calls no known function, and plain text, stay text.
        check(ToolFormat::Llama3Json, "{\"name\": \"unknown\", \"parameters\": {}}", &[text("{\"name\": \"unknown\", \"parameters\": {}}")]);
        check(ToolFormat::Llama3Json, "Plain {\"name\": \"search\"}", &[text("Plain {\"name\": \"search\"}")]);
        check(ToolFormat::Generic, " {\"tool_calls\": [{\"name\": \"search\", \"arguments\": {\"query\": \"q\"}}]}", &[call("search", json!({"query": "q"}))]);
        check(ToolFormat::Generic, "{\"tool_call\": {\"name\": \"search\", \"arguments\": {}}}", &[call("search", json!({}))]);
        check(ToolFormat::Generic, "{\"answer\": 1}", &[text("{\"answer\": 1}")]);
        check(ToolFormat::Generic, "{\"tool_call\": {\"name\": \"search\"", &[text("{\"tool_call\": {\"name\": \"search\"")]);
    }

    /// Random mixes of markup, JSON and text: whatever the cuts, the same result; calls carry
    /// JSON objects; without calls, the text comes back whole.
    #[test]
    fn random_text_is_never_lost_or_cut_differently() {
        let fragments = [
            "<tool_call>", "</tool_call>", "<function=search>", "</function>", "<parameter=query>", "</parameter>", "<|tool_calls_section_begin|>",
            "<|tool_calls_section_end|>", "<|tool_call_begin|>functions.search:0", "<|tool_call_argument_begin|>", "<|tool_call_end|>", "<|python_tag|>",
            "```json\n", "```", "{\"name\": \"search\", \"arguments\": {\"query\": \"q\"}}", "{\"name\": ", "\"search\"", "{", "}", "\"", "\\", " ", "\n",
            "<", "text", "é😀", "\"tool_calls\": [", "]", "\"parameters\": {}",
        ];
        let mut next = crate::xorshift(0x5eed_70015);
        for round in 0..3000 {
            let format = [ToolFormat::Hermes, ToolFormat::Qwen3Coder, ToolFormat::KimiK2, ToolFormat::Llama3Json, ToolFormat::Generic][round % 5];
            let len = 1 + next() as usize % 12;
            let text: String = (0..len).map(|_| fragments[next() as usize % fragments.len()]).collect();
            let whole = run(format, &text, &[]);
            let cuts: Vec<usize> = (0..3).map(|_| next() as usize % (text.len() + 1)).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            assert_eq!(run(format, &text, &cuts), whole, "{format:?} {text:?} cut at {cuts:?}");
            let every: Vec<usize> = (0..=text.len()).collect();
            assert_eq!(run(format, &text, &every), whole, "{format:?} {text:?} byte by byte");
            let mut calls = 0;
            for p in &whole {
                if let Parsed::Call { arguments, .. } = p {
                    calls += 1;
                    assert!(serde_json::from_str::<Value>(arguments).is_ok_and(|v| v.is_object()), "{arguments}");
                }
            }
            if calls == 0 {
                let back: String = whole.iter().map(|p| if let Parsed::Text(t) = p { t.as_str() } else { "" }).collect();
                assert_eq!(back, text, "{format:?}");
            }
        }
    }

    #[test]
    fn formats_are_detected_from_templates() {
        assert_eq!(ToolFormat::detect("{{- '<tool_call>\\n{\"name\": ' }}"), ToolFormat::Hermes);
        assert_eq!(ToolFormat::detect("<tool_call>\n<function={{ name }}>\n<parameter={{ k }}>"), ToolFormat::Qwen3Coder);
        assert_eq!(ToolFormat::detect("<|tool_calls_section_begin|>"), ToolFormat::KimiK2);
        assert_eq!(ToolFormat::detect("{% if tools -%}{{ '<|im_system|>tool_declare<|im_middle|>' -}}{{- tools | tojson -}}"), ToolFormat::KimiK2);
        assert_eq!(ToolFormat::detect("<|start_header_id|>ipython<|end_header_id|>"), ToolFormat::Llama3Json);
        assert_eq!(ToolFormat::detect("{% for m in messages %}{{ m.content }}{% endfor %}"), ToolFormat::Generic);
    }

    #[test]
    fn tools_and_choices_are_validated() {
        let tools = parse_tools(r#"[{"type":"function","function":{"name":"a","parameters":{"type":"object"}}},{"name":"b.c-d_e"}]"#).unwrap();
        assert_eq!(tools[1].name, "b.c-d_e");
        assert_eq!(tools[1].parameters, empty_parameters());
        for (bad, says) in [
            (r#"[{"name":""}]"#, "1 to 128"),
            (r#"[{"name":"a b"}]"#, "' '"),
            (r#"[{"name":"a","parameters":[1]}]"#, "JSON Schema object"),
            (r#"[{"name":"a"},{"name":"a"}]"#, "two tools"),
            (r#"{"name":"a"}"#, "invalid"),
            (r#"[{"description":"no name"}]"#, "did not match"),
        ] {
            let err = parse_tools(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(ToolChoice::parse("auto").validate(&tools).is_ok());
        assert!(ToolChoice::parse("none").validate(&[]).is_ok());
        assert!(matches!(ToolChoice::parse("required").validate(&tools), Err(Error::ToolChoiceNeedsGrammar { .. })));
        assert!(matches!(ToolChoice::parse("a").validate(&tools), Err(Error::ToolChoiceNeedsGrammar { .. })));
        assert!(matches!(ToolChoice::parse("zzz").validate(&tools), Err(Error::InvalidParameter { .. })));
    }

    #[test]
    fn template_values_carry_object_arguments() {
        let call = ToolCall::new("call_0", "search", r#"{"query":"x"}"#);
        assert_eq!(call.to_template_value()["function"]["arguments"], json!({"query": "x"}));
        let odd = ToolCall::new("call_1", "search", "not json");
        assert_eq!(odd.to_template_value()["function"]["arguments"], json!("not json"));
        let parsed: ToolCall = serde_json::from_value(json!({"id": "c", "function": {"name": "f", "arguments": {"a": 1}}})).unwrap();
        assert_eq!(parsed.function.arguments, r#"{"a":1}"#);
    }
}
