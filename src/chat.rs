//! Chat messages, rendered with the model's own `tokenizer.chat_template`.
//!
//! Templates are Jinja written for Python's Jinja2 and rendered as Hugging Face renders them:
//! `trim_blocks` and `lstrip_blocks` on, Python string methods (`.strip()`, `.split()`, …),
//! `raise_exception`, a Python-style `tojson` and `strftime_now`. Rendering is bounded: a
//! template gets a fixed budget of instructions and of output bytes, so a hostile template
//! cannot loop forever or exhaust memory.

use std::io::Write;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Kwargs;
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::tools::{Tool, ToolCall, ToolFormat};
use crate::tokenizer::Tokenizer;

/// Instructions a template may execute in one render; real templates use a few thousand.
const FUEL: u64 = 20_000_000;
/// Output a template may write beyond sixteen times the size of the messages.
const OUTPUT_ALLOWANCE: usize = 1 << 20;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The person talking to the model.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call, answering the assistant's call `tool_call_id`.
    Tool,
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says (`null` in JSON reads as empty, as OpenAI sends an assistant message
    /// that only calls tools).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    /// The tools an assistant message calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "toolCalls")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "toolCallId")]
    pub tool_call_id: Option<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// An assistant message that says `content` and calls `tool_calls`.
    pub fn assistant_calls(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Message {
        Message { tool_calls, ..Message::assistant(content) }
    }

    /// The result of the call `tool_call_id`.
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Message {
        Message { tool_call_id: Some(tool_call_id.into()), ..Message::new(Role::Tool, content) }
    }

    /// The message as chat templates receive it: tool calls' arguments as JSON objects.
    pub fn to_template_value(&self) -> serde_json::Value {
        let mut value = serde_json::json!({"role": self.role, "content": self.content});
        if !self.tool_calls.is_empty() {
            value["tool_calls"] = self.tool_calls.iter().map(ToolCall::to_template_value).collect();
        }
        if let Some(id) = &self.tool_call_id {
            value["tool_call_id"] = id.as_str().into();
        }
        value
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Message {
        Message::new(Role::User, content)
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Message {
        Message::new(Role::System, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new(Role::Assistant, content)
    }
}

/// Parses chat messages from JSON: an array of `{"role": "system"|"user"|"assistant"|"tool",
/// "content": "…"}`, assistant messages with OpenAI's `tool_calls`, tool messages with
/// `tool_call_id`.
///
/// # Errors
/// [`Error::InvalidMessages`] saying what is malformed.
pub fn parse_messages(json: &str) -> Result<Vec<Message>> {
    let messages: Vec<Message> = serde_json::from_str(json).map_err(|e| Error::InvalidMessages { reason: e.to_string() })?;
    if messages.is_empty() {
        return Err(Error::InvalidMessages { reason: "there are no messages".into() });
    }
    Ok(messages)
}

/// A compiled chat template with the token texts it is given.
pub struct ChatTemplate {
    env: Environment<'static>,
    format: ToolFormat,
    /// Whether the template reads `tools` at all.
    knows_tools: bool,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The template stored in the GGUF file, with its BOS/EOS token texts.
    ///
    /// # Errors
    /// [`Error::NoChatTemplate`] when the file has none, [`Error::Template`] when it does not
    /// compile.
    pub fn from_gguf(gguf: &Gguf, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let source = gguf.opt_str("tokenizer.chat_template")?.ok_or(Error::NoChatTemplate)?;
        let text = |id: Option<u32>| id.and_then(|id| tokenizer.token_text(id)).unwrap_or_default().to_string();
        ChatTemplate::new(source, text(tokenizer.bos()), text(tokenizer.eos()))
    }

    /// Compiles `source`, a Jinja2 chat template.
    ///
    /// # Errors
    /// [`Error::Template`] when it does not compile.
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string()).map_err(template_error)?;
        Ok(ChatTemplate { env, format: ToolFormat::detect(source), knows_tools: source.contains("tools"), bos_token, eos_token })
    }

    /// How the template teaches the model to write tool calls.
    pub fn tool_format(&self) -> ToolFormat {
        self.format
    }

    /// Renders `messages`; with `add_generation_prompt`, the text ends with the header that
    /// opens the assistant's reply (and whatever the template puts after it).
    ///
    /// # Errors
    /// [`Error::Template`] when the template raises an exception, runs out of its instruction
    /// or output budget, or fails otherwise.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Renders `messages` offering `tools`, which the template receives as `tools` (a list of
    /// OpenAI-shaped `{"type": "function", "function": {…}}` objects; `none` when empty), as
    /// Hugging Face and llama.cpp hand them over. A template that never reads `tools` gets
    /// them described in a system message instead ([`crate::tools::generic_system_prompt`]).
    ///
    /// # Errors
    /// As [`ChatTemplate::render`].
    pub fn render_with_tools(&self, messages: &[Message], tools: &[Tool], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template("chat").map_err(template_error)?;
        let mut values: Vec<serde_json::Value> = messages.iter().map(Message::to_template_value).collect();
        if !tools.is_empty() && !self.knows_tools {
            let described = crate::tools::generic_system_prompt(tools);
            match values.first_mut() {
                Some(first) if first["role"] == "system" => {
                    let content = format!("{}\n\n{described}", first["content"].as_str().unwrap_or_default());
                    first["content"] = content.into();
                }
                _ => values.insert(0, Message::system(described).to_template_value()),
            }
        }
        let tool_values: Option<Vec<serde_json::Value>> = (!tools.is_empty()).then(|| tools.iter().map(Tool::to_template_value).collect());
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(&values)),
            tools => Value::from(minijinja::value::Serde(&tool_values)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        let input: usize = values.iter().map(|m| m.to_string().len()).sum::<usize>() + tool_values.iter().flatten().map(|t| t.to_string().len()).sum::<usize>();
        let mut out = Bounded { buf: Vec::new(), limit: OUTPUT_ALLOWANCE + 16 * input };
        template.render_captured_to(ctx, &mut out).map_err(template_error)?;
        String::from_utf8(out.buf).map_err(|_| Error::Template { message: "the output is not UTF-8".into() })
    }
}

/// Tokenizes a rendered chat prompt: special-token text is parsed, and BOS is put first when
/// the model wants it and the template has not already written it.
///
/// # Errors
/// As [`Tokenizer::encode`].
pub fn tokenize_rendered(tokenizer: &Tokenizer, rendered: &str) -> Result<Vec<u32>> {
    let mut ids = tokenizer.encode(rendered, false, true)?;
    if let Some(bos) = tokenizer.bos().filter(|_| tokenizer.adds_bos()) {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}

fn template_error(e: minijinja::Error) -> Error {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Error::Template { message }
}

/// A writer that fails once `limit` bytes have been written.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(std::io::Error::other(format!("the template wrote more than {} bytes", self.limit)));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `raise_exception(message)`: templates call it to reject a conversation they cannot render.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson` as Hugging Face defines it: Python's `json.dumps(value, ensure_ascii=False,
/// indent=indent)`, which separates items with `", "` and keys with `": "` and escapes no
/// HTML characters.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?; // Hugging Face's is False
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_python_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&J::String(key.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `strftime_now(format)`: the current UTC time formatted with the common strftime codes.
fn strftime_now(format: String) -> String {
    let secs = web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Formats Unix time `secs` (UTC) with `%Y %y %m %d %e %H %M %S %j %B %b %A %a %%`; other codes
/// are kept as written.
fn strftime(format: &str, secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3)
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[Message]) -> Result<String> {
        ChatTemplate::new(source, "<s>".into(), "</s>".into())?.render(messages, true)
    }

    #[test]
    fn calendar_conversions_agree() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        // 2026-11-26 12:34:56 UTC was a Thursday.
        assert_eq!(strftime("%d %b %Y %H:%M:%S %A %j %%", 1_795_696_496), "26 Nov 2026 12:34:56 Thursday 330 %");
    }

    #[test]
    fn python_methods_and_whitespace_control() {
        let source = "{% for m in messages %}\n  {{ m.role.upper() }}:{{ m.content.strip() }}|\n{% endfor %}{% if add_generation_prompt %}{{ bos_token }}{% endif %}";
        let out = render(source, &[Message::user("  hi  "), Message::assistant("yo")]).unwrap();
        // What Jinja2 renders with trim_blocks and lstrip_blocks.
        assert_eq!(out, "  USER:hi|\n  ASSISTANT:yo|\n<s>");
        assert_eq!(render("  {% if true %}\n  x\n  {% endif %}\ny", &[]).unwrap(), "  x\ny");
    }

    #[test]
    fn tojson_matches_python() {
        let out = render("{{ {'a': [1, 'é<'], 'b': none} | tojson }}|{{ [1] | tojson(indent=2) }}", &[]).unwrap();
        assert_eq!(out, "{\"a\": [1, \"é<\"], \"b\": null}|[\n  1\n]");
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let err = render("{{ raise_exception('roles must alternate') }}", &[]).err().unwrap().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn runaway_templates_are_stopped() {
        for source in [
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "{% for i in range(100000) %}{{ 'x' * 10000 }}{% endfor %}",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "{{ 'x' * 1000000000000 }}",
        ] {
            assert!(matches!(render(source, &[]), Err(Error::Template { .. })), "{source}");
        }
    }

    #[test]
    fn messages_are_validated() {
        assert!(parse_messages(r#"[{"role":"user","content":"hi"}]"#).is_ok());
        let err = parse_messages(r#"[{"role":"wizard","content":"hi"}]"#).err().unwrap().to_string();
        assert!(err.contains("wizard"), "{err}");
        assert!(parse_messages("[]").is_err());
        assert!(parse_messages("{").is_err());
    }
}
