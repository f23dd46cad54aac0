//! JSON Schema → GBNF, by the rules of llama.cpp's converter (`common/json-schema-to-grammar.cpp`
//! and `json_schema_to_grammar.py`), so the same schema allows the same texts.
//!
//! The rules it follows:
//! - Whitespace between tokens is the rule `space`: nothing, one space, or one or two newlines
//!   and up to 20 spaces or tabs of indentation.
//! - Objects list their properties in the schema's order, required ones first, each optional
//!   one at most once and in order; `additionalProperties` (`true` or a schema) adds any other
//!   key after them.
//! - Rule names come from the property path (`root`, `address`, `address-street-kv`, …),
//!   sorted in the output; a name already used for a different rule gets a number.
//! - Unsupported keywords (`not`, `if`, `uniqueItems`, `multipleOf`, number bounds, remote
//!   `$ref`s, regex features beyond literals, classes, groups, `|` and quantifiers, …) are an
//!   [`Error::JsonSchema`] naming the keyword by its JSON pointer, never silently ignored.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::error::{Error, Result};

const SPACE_RULE: &str = r#"| " " | "\n"{1,2} [ \t]{0,20}"#;

/// A rule the converter adds when it is used: its body and the rules it uses.
struct Builtin {
    name: &'static str,
    body: &'static str,
    deps: &'static [&'static str],
}

const PRIMITIVES: &[Builtin] = &[
    Builtin { name: "boolean", body: r#"("true" | "false")"#, deps: &[] },
    Builtin { name: "decimal-part", body: "[0-9]{1,16}", deps: &[] },
    Builtin { name: "integral-part", body: "[0] | [1-9] [0-9]{0,15}", deps: &[] },
    Builtin { name: "number", body: r#"("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?"#, deps: &["integral-part", "decimal-part"] },
    Builtin { name: "integer", body: r#"("-"? integral-part)"#, deps: &["integral-part"] },
    Builtin { name: "value", body: "object | array | string | number | boolean | null", deps: &["object", "array", "string", "number", "boolean", "null"] },
    Builtin { name: "object", body: r#""{" space ( string ":" space value ("," space string ":" space value)* )? space "}""#, deps: &["string", "value"] },
    Builtin { name: "array", body: r#""[" space ( value ("," space value)* )? space "]""#, deps: &["value"] },
    Builtin { name: "uuid", body: r#""\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"""#, deps: &[] },
    Builtin { name: "char", body: r#"[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})"#, deps: &[] },
    Builtin { name: "string", body: r#""\"" char* "\"""#, deps: &["char"] },
    Builtin { name: "null", body: r#""null""#, deps: &[] },
    Builtin { name: "date", body: r#"[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )"#, deps: &[] },
    Builtin { name: "time", body: r#"([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )"#, deps: &[] },
    Builtin { name: "date-time", body: r#"date "T" time"#, deps: &["date", "time"] },
    Builtin { name: "date-string", body: r#""\"" date "\"""#, deps: &["date"] },
    Builtin { name: "time-string", body: r#""\"" time "\"""#, deps: &["time"] },
    Builtin { name: "date-time-string", body: r#""\"" date-time "\"""#, deps: &["date-time"] },
];

/// Keywords that change which documents a schema accepts but that the converter cannot express.
const UNSUPPORTED: &[&str] = &[
    "not",
    "if",
    "then",
    "else",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "multipleOf",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "minProperties",
    "maxProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
];

fn builtin(name: &str) -> Option<&'static Builtin> {
    PRIMITIVES.iter().find(|b| b.name == name)
}

fn is_reserved(name: &str) -> bool {
    name == "root" || builtin(name).is_some()
}

/// Converts a JSON Schema to GBNF text whose `root` rule matches the documents it describes,
/// as llama.cpp's converter writes it (rules sorted by name, one per line).
///
/// # Errors
/// [`Error::JsonSchema`] with the JSON pointer of an invalid or unsupported part.
pub fn json_schema_to_gbnf(schema: &Value) -> Result<String> {
    let mut converter = Converter { root: schema, rules: BTreeMap::new(), resolving: HashSet::new(), depth: 0 };
    converter.rules.insert("space".into(), SPACE_RULE.into());
    converter.visit(schema, "", "#")?;
    let mut out = String::new();
    for (name, rule) in &converter.rules {
        out.push_str(name);
        out.push_str(" ::= ");
        out.push_str(rule);
        out.push('\n');
    }
    // What llama.cpp's converter writes cannot always run (a pattern like `^(a?)+$` repeats
    // something that can match nothing: a left-recursive rule, which llama.cpp refuses too).
    if let Err(e) = super::Grammar::parse(&out) {
        return Err(fail("#", format!("the schema converts to a grammar that cannot run: {e}")));
    }
    Ok(out)
}

/// Deepest nesting of schemas followed (guards the stack against adversarial input).
const MAX_DEPTH: usize = 128;

struct Converter<'a> {
    root: &'a Value,
    rules: BTreeMap<String, String>,
    /// `$ref`s whose target is being converted (a reference back to one stops there).
    resolving: HashSet<String>,
    depth: usize,
}

fn fail(pointer: &str, message: impl Into<String>) -> Error {
    Error::JsonSchema { pointer: pointer.to_string(), message: message.into() }
}

/// `"` + the text with `\r`, `\n`, `"` and `\` escaped + `"`.
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A constant value as a GBNF literal of its compact JSON text.
fn constant(value: &Value) -> String {
    literal(&value.to_string())
}

/// Replaces each run of characters other than ASCII letters, digits and `-` by one `-`.
fn rule_name_chars(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    out
}

/// `item` repeated `min..=max` times (`max` `None`: unbounded), `separator` between items.
fn repetition(item: &str, min: u64, max: Option<u64>, separator: &str) -> String {
    if max == Some(0) {
        return String::new();
    }
    if min == 0 && max == Some(1) {
        return format!("{item}?");
    }
    if separator.is_empty() {
        return match (min, max) {
            (1, None) => format!("{item}+"),
            (0, None) => format!("{item}*"),
            (min, None) => format!("{item}{{{min},}}"),
            (min, Some(max)) => format!("{item}{{{min},{max}}}"),
        };
    }
    let rest = repetition(&format!("({separator} {item})"), min.saturating_sub(1), max.map(|m| m - 1), "");
    let result = format!("{item} {rest}");
    if min == 0 {
        format!("({result})?")
    } else {
        result
    }
}

/// Writes an alternation of digit strings for the integers in `[min, max]` (`None`: unbounded),
/// as llama.cpp's `build_min_max_int` does.
fn min_max_int(min: Option<i64>, max: Option<i64>, out: &mut String, decimals_left: u32, top_level: bool) -> std::result::Result<(), String> {
    let less_decimals = decimals_left.saturating_sub(1).max(1);
    let neg = |v: i64| v.checked_neg().ok_or_else(|| format!("bound {v} is out of range"));
    match (min, max) {
        (Some(min), Some(max)) => {
            if min < 0 && max < 0 {
                out.push_str("\"-\" (");
                min_max_int(Some(neg(max)?), Some(neg(min)?), out, decimals_left, true)?;
                out.push(')');
                return Ok(());
            }
            let mut min = min;
            if min < 0 {
                out.push_str("\"-\" (");
                min_max_int(Some(0), Some(neg(min)?), out, decimals_left, true)?;
                out.push_str(") | ");
                min = 0;
            }
            let mut min_s = min.to_string().into_bytes();
            let max_s = max.to_string().into_bytes();
            for digits in min_s.len()..max_s.len() {
                uniform_range(out, &min_s, &vec![b'9'; digits]);
                min_s = std::iter::once(b'1').chain(std::iter::repeat_n(b'0', digits)).collect();
                out.push_str(" | ");
            }
            uniform_range(out, &min_s, &max_s);
            Ok(())
        }
        (Some(min), None) => {
            if min < 0 {
                out.push_str("\"-\" (");
                min_max_int(None, Some(neg(min)?), out, decimals_left, false)?;
                out.push_str(") | [0] | [1-9] ");
                more_digits(out, 0, Some(decimals_left.saturating_sub(1)));
            } else if min == 0 {
                if top_level {
                    out.push_str("[0] | [1-9] ");
                    more_digits(out, 0, Some(less_decimals));
                } else {
                    more_digits(out, 1, Some(decimals_left));
                }
            } else if min <= 9 {
                let c = b'0' + min as u8;
                let range_start = if top_level { b'1' } else { b'0' };
                if c > range_start {
                    digit_range(out, range_start, c - 1);
                    out.push(' ');
                    more_digits(out, 1, Some(less_decimals));
                    out.push_str(" | ");
                }
                digit_range(out, c, b'9');
                out.push(' ');
                more_digits(out, 0, Some(less_decimals));
            } else {
                let min_s = min.to_string().into_bytes();
                let len = min_s.len() as u32;
                let c = min_s[0];
                if c > b'1' {
                    digit_range(out, if top_level { b'1' } else { b'0' }, c - 1);
                    out.push(' ');
                    more_digits(out, len, Some(less_decimals));
                    out.push_str(" | ");
                }
                digit_range(out, c, c);
                out.push_str(" (");
                let rest: i64 = std::str::from_utf8(&min_s[1..]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                min_max_int(Some(rest), None, out, less_decimals, false)?;
                out.push(')');
                if c < b'9' {
                    out.push_str(" | ");
                    digit_range(out, c + 1, b'9');
                    out.push(' ');
                    more_digits(out, len - 1, Some(less_decimals));
                }
            }
            Ok(())
        }
        (None, Some(max)) => {
            if max >= 0 {
                if top_level {
                    out.push_str("\"-\" [1-9] ");
                    more_digits(out, 0, Some(less_decimals));
                    out.push_str(" | ");
                }
                min_max_int(Some(0), Some(max), out, decimals_left, true)
            } else {
                out.push_str("\"-\" (");
                min_max_int(Some(neg(max)?), None, out, decimals_left, false)?;
                out.push(')');
                Ok(())
            }
        }
        (None, None) => Err("an integer range needs a minimum or a maximum".into()),
    }
}

/// `[a-b]`, or `[a]` when they are equal.
fn digit_range(out: &mut String, from: u8, to: u8) {
    out.push('[');
    out.push(from as char);
    if from != to {
        out.push('-');
        out.push(to as char);
    }
    out.push(']');
}

/// `[0-9]{min,max}` (`[0-9]` for exactly one, `{n}` for exactly n, `{n,}` unbounded).
fn more_digits(out: &mut String, min_digits: u32, max_digits: Option<u32>) {
    out.push_str("[0-9]");
    if min_digits == 1 && max_digits == Some(1) {
        return;
    }
    out.push('{');
    out.push_str(&min_digits.to_string());
    if max_digits != Some(min_digits) {
        out.push(',');
        if let Some(max) = max_digits {
            out.push_str(&max.to_string());
        }
    }
    out.push('}');
}

/// Digit strings of equal length from `from` to `to`.
fn uniform_range(out: &mut String, from: &[u8], to: &[u8]) {
    let mut i = 0;
    while i < from.len() && i < to.len() && from[i] == to[i] {
        i += 1;
    }
    if i > 0 {
        out.push('"');
        out.push_str(&String::from_utf8_lossy(&from[..i]));
        out.push('"');
    }
    if i < from.len() && i < to.len() {
        if i > 0 {
            out.push(' ');
        }
        let sub_len = from.len() - i - 1;
        if sub_len > 0 {
            let (from_sub, to_sub) = (&from[i + 1..], to.get(i + 1..).unwrap_or_default());
            let zeros = vec![b'0'; sub_len];
            let nines = vec![b'9'; sub_len];
            let mut to_reached = false;
            out.push('(');
            let sub_digits = sub_len as u32;
            let digits = |out: &mut String| more_digits(out, sub_digits, Some(sub_digits));
            let range = digit_range;
            if from_sub == zeros.as_slice() {
                range(out, from[i], to[i] - 1);
                out.push(' ');
                digits(out);
            } else {
                out.push('[');
                out.push(from[i] as char);
                out.push_str("] (");
                uniform_range(out, from_sub, &nines);
                out.push(')');
                if from[i] < to[i] - 1 {
                    out.push_str(" | ");
                    if to_sub == nines.as_slice() {
                        range(out, from[i] + 1, to[i]);
                        to_reached = true;
                    } else {
                        range(out, from[i] + 1, to[i] - 1);
                    }
                    out.push(' ');
                    digits(out);
                }
            }
            if !to_reached {
                out.push_str(" | ");
                range(out, to[i], to[i]);
                out.push(' ');
                uniform_range(out, &zeros, to_sub);
            }
            out.push(')');
        } else {
            out.push('[');
            out.push(from[i] as char);
            out.push('-');
            out.push(to[i] as char);
            out.push(']');
        }
    }
}

/// What a schema object is, decided in the order llama.cpp decides it.
enum Kind {
    Ref,
    AnyOf(&'static str),
    TypeList,
    Const,
    Enum,
    Object,
    AllOf,
    Array,
    String,
    Integer,
    Number,
    Boolean,
    Null,
    Any,
}

impl<'a> Converter<'a> {
    fn add_rule(&mut self, name: &str, rule: String) -> String {
        let esc = rule_name_chars(name);
        match self.rules.get(&esc) {
            None => {}
            Some(existing) if *existing == rule => {}
            Some(_) => {
                let mut i = 0;
                let key = loop {
                    let key = format!("{esc}{i}");
                    match self.rules.get(&key) {
                        Some(existing) if *existing != rule => i += 1,
                        _ => break key,
                    }
                };
                self.rules.insert(key.clone(), rule);
                return key;
            }
        }
        self.rules.insert(esc.clone(), rule);
        esc
    }

    fn add_primitive(&mut self, name: &str, which: &str) -> String {
        let Some(b) = builtin(which) else { return String::new() };
        let n = self.add_rule(name, b.body.to_string());
        for dep in b.deps {
            if !self.rules.contains_key(*dep) {
                self.add_primitive(dep, dep);
            }
        }
        n
    }

    fn visit_primitive(&mut self, rule_name: &str, which: &str) -> String {
        self.add_primitive(if rule_name == "root" { "root" } else { which }, which)
    }

    fn kind(schema: &serde_json::Map<String, Value>, pointer: &str) -> Result<Kind> {
        if schema.contains_key("$ref") {
            return Ok(Kind::Ref);
        }
        if schema.contains_key("oneOf") {
            return Ok(Kind::AnyOf("oneOf"));
        }
        if schema.contains_key("anyOf") {
            return Ok(Kind::AnyOf("anyOf"));
        }
        for key in UNSUPPORTED {
            if schema.contains_key(*key) {
                return Err(fail(&format!("{pointer}/{key}"), format!("the keyword `{key}` is not supported")));
            }
        }
        let ty = schema.get("type");
        if ty.is_some_and(Value::is_array) {
            return Ok(Kind::TypeList);
        }
        if schema.contains_key("const") {
            return Ok(Kind::Const);
        }
        if schema.contains_key("enum") {
            return Ok(Kind::Enum);
        }
        let type_name = match ty {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(fail(&format!("{pointer}/type"), "type must be a string or an array of strings")),
        };
        let has_properties = schema.contains_key("properties") || schema.get("additionalProperties").is_some_and(|a| *a != Value::Bool(true));
        let string_like = ["pattern", "minLength", "maxLength"].iter().any(|k| schema.contains_key(*k)) || string_format(schema, pointer)?.is_some();
        Ok(match type_name {
            "" if has_properties => Kind::Object,
            "" if schema.contains_key("allOf") => Kind::AllOf,
            "" if schema.contains_key("items") || schema.contains_key("prefixItems") => Kind::Array,
            "" if string_like => Kind::String,
            "" => Kind::Any,
            "object" if !has_properties && schema.contains_key("allOf") => Kind::AllOf,
            "object" => Kind::Object,
            "string" if schema.contains_key("allOf") => Kind::AllOf,
            "string" => Kind::String,
            "array" => Kind::Array,
            "integer" => Kind::Integer,
            "number" => Kind::Number,
            "boolean" => Kind::Boolean,
            "null" => Kind::Null,
            other => return Err(fail(&format!("{pointer}/type"), format!("unrecognized type `{other}`"))),
        })
    }

    fn visit(&mut self, schema: &Value, name: &str, pointer: &str) -> Result<String> {
        if self.depth >= MAX_DEPTH {
            return Err(fail(pointer, format!("the schema nests deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        let result = self.visit_inner(schema, name, pointer);
        self.depth -= 1;
        result
    }

    fn visit_inner(&mut self, schema: &Value, name: &str, pointer: &str) -> Result<String> {
        let Value::Object(obj) = schema else {
            return Err(fail(pointer, "a schema must be an object"));
        };
        let rule_name = if is_reserved(name) {
            format!("{name}-")
        } else if name.is_empty() {
            "root".to_string()
        } else {
            name.to_string()
        };
        let sub_name = if name.is_empty() { String::new() } else { format!("{name}-") };
        for number_bound in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
            if obj.contains_key(number_bound) && obj.get("type").and_then(Value::as_str) == Some("number") {
                return Err(fail(&format!("{pointer}/{number_bound}"), format!("`{number_bound}` is supported for integers only")));
            }
        }
        match Self::kind(obj, pointer)? {
            Kind::Ref => {
                let target = self.resolve_ref(obj.get("$ref"), pointer)?;
                Ok(self.add_rule(&rule_name, target))
            }
            Kind::AnyOf(key) => {
                let alts = alternatives(obj.get(key), &format!("{pointer}/{key}"))?;
                let union = self.union(name, alts, &format!("{pointer}/{key}"))?;
                Ok(self.add_rule(&rule_name, union))
            }
            Kind::TypeList => {
                let types = obj.get("type").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                if types.is_empty() {
                    return Err(fail(&format!("{pointer}/type"), "type must not be empty"));
                }
                let mut rules = Vec::new();
                for (i, t) in types.iter().enumerate() {
                    let mut alt = obj.clone();
                    alt.insert("type".into(), t.clone());
                    let alt_name = format!("{name}{}{i}", if name.is_empty() { "alternative-" } else { "-" });
                    rules.push(self.visit(&Value::Object(alt), &alt_name, &format!("{pointer}/type/{i}"))?);
                }
                Ok(self.add_rule(&rule_name, rules.join(" | ")))
            }
            Kind::Const => {
                let rule = constant(obj.get("const").unwrap_or(&Value::Null));
                Ok(self.add_rule(&rule_name, rule))
            }
            Kind::Enum => {
                let values = obj.get("enum").and_then(Value::as_array).filter(|v| !v.is_empty());
                let values = values.ok_or_else(|| fail(&format!("{pointer}/enum"), "enum must be a non-empty array"))?;
                let rule = format!("({})", values.iter().map(constant).collect::<Vec<_>>().join(" | "));
                Ok(self.add_rule(&rule_name, rule))
            }
            Kind::Object => self.visit_object(obj, name, &rule_name, pointer),
            Kind::AllOf => self.visit_all_of(obj, name, &rule_name, pointer),
            Kind::Array => self.visit_array(obj, &rule_name, &sub_name, pointer),
            Kind::String => self.visit_string(obj, &rule_name, pointer),
            Kind::Integer => {
                let min = match (obj.get("minimum"), obj.get("exclusiveMinimum")) {
                    (Some(v), _) => Some(bound(v, true, &format!("{pointer}/minimum"))?),
                    (None, Some(v)) => Some(bound(v, false, &format!("{pointer}/exclusiveMinimum"))?.checked_add(1).ok_or_else(|| fail(pointer, "exclusiveMinimum is out of range"))?),
                    (None, None) => None,
                };
                let max = match (obj.get("maximum"), obj.get("exclusiveMaximum")) {
                    (Some(v), _) => Some(bound(v, false, &format!("{pointer}/maximum"))?),
                    (None, Some(v)) => Some(bound(v, true, &format!("{pointer}/exclusiveMaximum"))?.checked_sub(1).ok_or_else(|| fail(pointer, "exclusiveMaximum is out of range"))?),
                    (None, None) => None,
                };
                if min.is_none() && max.is_none() {
                    return Ok(self.visit_primitive(&rule_name, "integer"));
                }
                if let (Some(lo), Some(hi)) = (min, max) {
                    if lo > hi {
                        return Err(fail(pointer, format!("the minimum {lo} is above the maximum {hi}")));
                    }
                }
                let mut out = String::from("(");
                min_max_int(min, max, &mut out, 16, true).map_err(|m| fail(pointer, m))?;
                out.push(')');
                Ok(self.add_rule(&rule_name, out))
            }
            Kind::Number => Ok(self.visit_primitive(&rule_name, "number")),
            Kind::Boolean => Ok(self.visit_primitive(&rule_name, "boolean")),
            Kind::Null => Ok(self.visit_primitive(&rule_name, "null")),
            Kind::Any => {
                let value = self.add_primitive("value", "value");
                Ok(self.add_rule(&rule_name, value))
            }
        }
    }

    fn union(&mut self, name: &str, alts: &[Value], pointer: &str) -> Result<String> {
        let mut rules = Vec::with_capacity(alts.len());
        for (i, alt) in alts.iter().enumerate() {
            let alt_name = format!("{name}{}{i}", if name.is_empty() { "alternative-" } else { "-" });
            rules.push(self.visit(alt, &alt_name, &format!("{pointer}/{i}"))?);
        }
        Ok(rules.join(" | "))
    }

    /// The schema a `#/…` reference points to.
    fn target(&self, reference: &str, pointer: &str) -> Result<&'a Value> {
        let Some(path) = reference.strip_prefix('#') else {
            return Err(fail(pointer, format!("$ref `{reference}`: only references into the same document (`#/…`) are supported")));
        };
        if !path.starts_with('/') {
            return Err(fail(pointer, format!("$ref `{reference}`: only references into the same document (`#/…`) are supported")));
        }
        self.root.pointer(path).ok_or_else(|| fail(pointer, format!("$ref `{reference}` points to nothing in the schema")))
    }

    fn resolve_ref(&mut self, reference: Option<&Value>, pointer: &str) -> Result<String> {
        let ref_pointer = format!("{pointer}/$ref");
        let reference = reference.and_then(Value::as_str).ok_or_else(|| fail(&ref_pointer, "$ref must be a string"))?;
        let target = self.target(reference, &ref_pointer)?;
        let fragment = reference.split_once('#').map_or(reference, |(_, f)| f);
        let ref_name = format!("ref{}", rule_name_chars(fragment));
        if self.rules.contains_key(&ref_name) || self.resolving.contains(reference) {
            return Ok(ref_name);
        }
        self.resolving.insert(reference.to_string());
        let result = self.visit(target, &ref_name, reference);
        self.resolving.remove(reference);
        result
    }

    fn visit_object(&mut self, obj: &serde_json::Map<String, Value>, name: &str, rule_name: &str, pointer: &str) -> Result<String> {
        let required: HashSet<&str> = obj.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let mut properties = Vec::new();
        if let Some(props) = obj.get("properties") {
            let props = props.as_object().ok_or_else(|| fail(&format!("{pointer}/properties"), "properties must be an object"))?;
            for (key, schema) in props {
                properties.push((key.clone(), schema.clone(), format!("{pointer}/properties/{}", escape_pointer(key)), required.contains(key.as_str())));
            }
        }
        let additional = match obj.get("additionalProperties") {
            Some(Value::Bool(true)) => Some(None),
            Some(Value::Bool(false)) => None,
            Some(schema @ Value::Object(_)) if is_any(schema) => Some(None),
            Some(schema @ Value::Object(_)) => Some(Some(schema)),
            Some(_) => return Err(fail(&format!("{pointer}/additionalProperties"), "additionalProperties must be a boolean or a schema")),
            None if obj.contains_key("properties") => None,
            None => Some(None),
        };
        if properties.is_empty() && matches!(additional, Some(None)) {
            let object = self.add_primitive("object", "object");
            return Ok(self.add_rule(rule_name, object));
        }
        let additional = additional.map(|a| a.map(|schema| (schema, format!("{pointer}/additionalProperties"))));
        let rule = self.object_rule(&properties, name, additional)?;
        Ok(self.add_rule(rule_name, rule))
    }

    fn visit_all_of(&mut self, obj: &serde_json::Map<String, Value>, name: &str, rule_name: &str, pointer: &str) -> Result<String> {
        let all_pointer = format!("{pointer}/allOf");
        let children = alternatives(obj.get("allOf"), &all_pointer)?;
        let mut properties: Vec<Property> = Vec::new();
        // Constant rule text → in how many children it is allowed; sorted, as llama.cpp's map.
        let mut enums: BTreeMap<String, usize> = BTreeMap::new();
        for (i, child) in children.iter().enumerate() {
            let child_pointer = format!("{all_pointer}/{i}");
            if let Some(alts) = child.get("anyOf") {
                for (j, alt) in alternatives(Some(alts), &format!("{child_pointer}/anyOf"))?.iter().enumerate() {
                    self.all_of_component(alt, false, &format!("{child_pointer}/anyOf/{j}"), &mut properties, &mut enums, 0)?;
                }
            } else {
                self.all_of_component(child, true, &child_pointer, &mut properties, &mut enums, 0)?;
            }
        }
        let both: Vec<String> = enums.into_iter().filter(|&(_, n)| n == children.len()).map(|(rule, _)| rule).collect();
        if !both.is_empty() {
            return Ok(self.add_rule(rule_name, format!("({})", both.join(" | "))));
        }
        let rule = self.object_rule(&properties, name, None)?;
        Ok(self.add_rule(rule_name, rule))
    }

    /// Adds what an `allOf` child contributes: an object's properties (required when the child
    /// is not inside an `anyOf`), or an enum's values.
    fn all_of_component(&self, schema: &Value, required: bool, pointer: &str, properties: &mut Vec<Property>, enums: &mut BTreeMap<String, usize>, depth: usize) -> Result<()> {
        let Value::Object(obj) = schema else {
            return Err(fail(pointer, "a schema must be an object"));
        };
        if depth >= MAX_DEPTH {
            return Err(fail(pointer, "$refs nest too deep"));
        }
        match Self::kind(obj, pointer)? {
            Kind::Ref => {
                let reference = obj.get("$ref").and_then(Value::as_str).ok_or_else(|| fail(&format!("{pointer}/$ref"), "$ref must be a string"))?;
                let target = self.target(reference, &format!("{pointer}/$ref"))?;
                self.all_of_component(target, required, reference, properties, enums, depth + 1)
            }
            Kind::Object => {
                if let Some(props) = obj.get("properties") {
                    let props = props.as_object().ok_or_else(|| fail(&format!("{pointer}/properties"), "properties must be an object"))?;
                    for (key, schema) in props {
                        properties.push((key.clone(), schema.clone(), format!("{pointer}/properties/{}", escape_pointer(key)), required));
                    }
                }
                Ok(())
            }
            Kind::Enum => {
                for v in obj.get("enum").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                    *enums.entry(constant(v)).or_insert(0) += 1;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn visit_array(&mut self, obj: &serde_json::Map<String, Value>, rule_name: &str, sub_name: &str, pointer: &str) -> Result<String> {
        let key = if obj.contains_key("items") { "items" } else { "prefixItems" };
        let items = obj.get(key);
        if let Some(Value::Array(tuple)) = items {
            let mut rule = String::from("\"[\" space ");
            for (i, item) in tuple.iter().enumerate() {
                if i > 0 {
                    rule.push_str(" \",\" space ");
                }
                rule.push_str(&self.visit(item, &format!("{sub_name}tuple-{i}"), &format!("{pointer}/{key}/{i}"))?);
            }
            rule.push_str(" space \"]\"");
            return Ok(self.add_rule(rule_name, rule));
        }
        let min = count(obj, "minItems", pointer)?.unwrap_or(0);
        let max = count(obj, "maxItems", pointer)?;
        check_range(min, max, "minItems", "maxItems", pointer)?;
        let any_items = items.is_none_or(is_any);
        if any_items && min == 0 && max.is_none() {
            return Ok(self.visit_primitive(rule_name, "array"));
        }
        let empty = Value::Object(serde_json::Map::new());
        let item_rule = self.visit(items.unwrap_or(&empty), &format!("{sub_name}item"), &format!("{pointer}/{key}"))?;
        let rule = format!("\"[\" space {} space \"]\"", repetition(&item_rule, min, max, "\",\" space"));
        Ok(self.add_rule(rule_name, rule))
    }

    fn visit_string(&mut self, obj: &serde_json::Map<String, Value>, rule_name: &str, pointer: &str) -> Result<String> {
        if let Some(pattern) = obj.get("pattern") {
            let pattern_pointer = format!("{pointer}/pattern");
            let pattern = pattern.as_str().ok_or_else(|| fail(&pattern_pointer, "pattern must be a string"))?;
            return Pattern::convert(self, pattern, rule_name).map_err(|m| fail(&pattern_pointer, format!("pattern `{pattern}`: {m}")));
        }
        match string_format(obj, pointer)? {
            Some("uuid") => return Ok(self.visit_primitive(rule_name, "uuid")),
            Some(format) => {
                let prim = format!("{format}-string");
                let p = self.add_primitive(&prim, &prim);
                return Ok(self.add_rule(rule_name, p));
            }
            None => {}
        }
        let min = count(obj, "minLength", pointer)?.unwrap_or(0);
        let max = count(obj, "maxLength", pointer)?;
        check_range(min, max, "minLength", "maxLength", pointer)?;
        if min > 0 || max.is_some() {
            let char_rule = self.add_primitive("char", "char");
            let rule = format!("\"\\\"\" {} \"\\\"\"", repetition(&char_rule, min, max, ""));
            return Ok(self.add_rule(rule_name, rule));
        }
        Ok(self.visit_primitive(rule_name, "string"))
    }

    /// The rule of an object with these properties (name, schema, pointer, required) and
    /// optionally any other key (`Some(None)`: any value; `Some(Some(schema))`).
    fn object_rule(&mut self, properties: &[Property], name: &str, additional: Option<Option<(&Value, String)>>) -> Result<String> {
        let prefix = if name.is_empty() { String::new() } else { format!("{name}-") };
        let mut required = Vec::new();
        let mut optional = Vec::new();
        let mut kv_rules: HashMap<String, String> = HashMap::new();
        let mut names = Vec::new();
        for (key, schema, pointer, is_required) in properties {
            let value_rule = self.visit(schema, &format!("{prefix}{key}"), pointer)?;
            let kv = self.add_rule(&format!("{prefix}{key}-kv"), format!("{} space \":\" space {value_rule}", literal(&Value::String(key.clone()).to_string())));
            kv_rules.insert(key.clone(), kv);
            if *is_required {
                required.push(key.clone());
            } else {
                optional.push(key.clone());
            }
            names.push(key.clone());
        }
        if let Some(additional) = additional {
            let sub_name = format!("{prefix}additional");
            let value_rule = match additional {
                Some((schema, pointer)) => self.visit(schema, &format!("{sub_name}-value"), &pointer)?,
                None => self.add_primitive("value", "value"),
            };
            let key_rule = if names.is_empty() {
                self.add_primitive("string", "string")
            } else {
                let not = self.not_strings(&names);
                self.add_rule(&format!("{sub_name}-k"), not)
            };
            let kv = self.add_rule(&format!("{sub_name}-kv"), format!("{key_rule} \":\" space {value_rule}"));
            kv_rules.insert("*".into(), kv);
            optional.push("*".into());
        }
        if required.is_empty() && optional.is_empty() {
            return Ok("\"{\" space \"}\"".into());
        }
        let kv = |k: &str| kv_rules.get(k).cloned().unwrap_or_default();
        let mut rule = String::from("\"{\" space ");
        rule.push_str(&required.iter().map(|k| kv(k)).collect::<Vec<_>>().join(" \",\" space "));
        if !optional.is_empty() {
            rule.push_str(" (");
            if !required.is_empty() {
                rule.push_str(" \",\" space ( ");
            }
            let mut alts = Vec::new();
            for i in 0..optional.len() {
                alts.push(self.recursive_refs(&optional[i..], false, &prefix, &kv_rules));
            }
            rule.push_str(&alts.join(" | "));
            if !required.is_empty() {
                rule.push_str(" )");
            }
            rule.push_str(" )?");
        }
        rule.push_str(" space \"}\"");
        Ok(rule)
    }

    /// The optional keys `keys` in order, each at most once (`*`, any other key, many times).
    fn recursive_refs(&mut self, keys: &[String], first_is_optional: bool, prefix: &str, kv_rules: &HashMap<String, String>) -> String {
        let Some((k, rest)) = keys.split_first() else { return String::new() };
        let kv = kv_rules.get(k).cloned().unwrap_or_default();
        let comma = format!("( \",\" space {kv} )");
        let mut res = match (first_is_optional, k == "*") {
            (true, true) => format!("{comma}*"),
            (true, false) => format!("{comma}?"),
            (false, true) => format!("{kv} {comma}*"),
            (false, false) => kv,
        };
        if !rest.is_empty() {
            let inner = self.recursive_refs(rest, true, prefix, kv_rules);
            res.push(' ');
            res.push_str(&self.add_rule(&format!("{prefix}{k}-rest"), inner));
        }
        res
    }

    /// A JSON string rule that matches any string except `strings`.
    fn not_strings(&mut self, strings: &[String]) -> String {
        // A trie over the strings' characters, children in code point order.
        #[derive(Default)]
        struct Node {
            children: BTreeMap<char, usize>,
            end: bool,
        }
        let mut nodes = vec![Node::default()];
        for s in strings {
            let mut at = 0;
            for c in s.chars() {
                let next = nodes.len();
                let child = *nodes[at].children.entry(c).or_insert(next);
                if child == next {
                    nodes.push(Node::default());
                }
                at = child;
            }
            nodes[at].end = true;
        }
        let char_rule = self.add_primitive("char", "char");
        fn walk(nodes: &[Node], idx: usize, char_rule: &str, out: &mut String) {
            let Some(node) = nodes.get(idx) else { return };
            let mut rejects = String::new();
            for (i, (&c, &child)) in node.children.iter().enumerate() {
                rejects.push(c);
                if i > 0 {
                    out.push_str(" | ");
                }
                out.push('[');
                out.push(c);
                out.push(']');
                if nodes.get(child).is_some_and(|n| !n.children.is_empty()) {
                    out.push_str(" (");
                    walk(nodes, child, char_rule, out);
                    out.push(')');
                } else {
                    out.push(' ');
                    out.push_str(char_rule);
                    out.push('+');
                }
            }
            if !node.children.is_empty() {
                out.push_str(&format!(" | [^\"{rejects}] {char_rule}*"));
            }
        }
        let mut out = String::from("[\"] ( ");
        walk(&nodes, 0, &char_rule, &mut out);
        out.push_str(" )");
        if !nodes[0].end {
            out.push('?');
        }
        out.push_str(" [\"]");
        out
    }
}

/// A property: its key, schema, JSON pointer and whether it is required.
type Property = (String, Value, String, bool);

/// Whether a schema accepts any value (llama.cpp writes `value` for it).
fn is_any(schema: &Value) -> bool {
    schema.as_object().is_some_and(|o| matches!(Converter::kind(o, ""), Ok(Kind::Any)))
}

/// Escapes a key for a JSON pointer (`~` → `~0`, `/` → `~1`).
fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The array of subschemas under `anyOf`/`oneOf`/`allOf`.
fn alternatives<'v>(value: Option<&'v Value>, pointer: &str) -> Result<&'v [Value]> {
    match value {
        Some(Value::Array(a)) if !a.is_empty() => Ok(a),
        Some(Value::Array(_)) => Err(fail(pointer, "must not be empty")),
        _ => Err(fail(pointer, "must be an array of schemas")),
    }
}

/// A non-negative integer keyword (`minItems`, `maxLength`, …).
fn count(obj: &serde_json::Map<String, Value>, key: &str, pointer: &str) -> Result<Option<u64>> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= i32::MAX as u64 => Ok(Some(n)),
            _ => Err(fail(&format!("{pointer}/{key}"), format!("{key} must be a non-negative integer"))),
        },
    }
}

/// A minimum above its maximum admits nothing (and would write an invalid repetition).
fn check_range(min: u64, max: Option<u64>, min_key: &str, max_key: &str, pointer: &str) -> Result<()> {
    match max {
        Some(max) if max < min => Err(fail(&format!("{pointer}/{min_key}"), format!("{min_key} {min} is above {max_key} {max}"))),
        _ => Ok(()),
    }
}

/// An integer bound; a fractional one rounded inwards (up for minimums).
fn bound(value: &Value, round_up: bool, pointer: &str) -> Result<i64> {
    if let Some(i) = value.as_i64() {
        return Ok(i);
    }
    let d = value.as_f64().ok_or_else(|| fail(pointer, "must be a number"))?;
    let r = if round_up { d.ceil() } else { d.floor() };
    if !(r >= i64::MIN as f64 && r < i64::MAX as f64) {
        return Err(fail(pointer, "is out of range"));
    }
    Ok(r as i64)
}

/// The `format` llama.cpp has a rule for (`date`, `time`, `date-time`, `uuid`), if any.
fn string_format(obj: &serde_json::Map<String, Value>, pointer: &str) -> Result<Option<&'static str>> {
    let Some(format) = obj.get("format") else { return Ok(None) };
    let format = format.as_str().ok_or_else(|| fail(&format!("{pointer}/format"), "format must be a string"))?;
    Ok(match format {
        "date" => Some("date"),
        "time" => Some("time"),
        "date-time" => Some("date-time"),
        "uuid" | "uuid1" | "uuid2" | "uuid3" | "uuid4" | "uuid5" => Some("uuid"),
        _ => None,
    })
}

/// A regular expression (`^…$`) translated to GBNF, as llama.cpp translates it.
struct Pattern<'p> {
    p: &'p [u8],
    i: usize,
    depth: usize,
    /// Repeated groups and classes, each a rule of its own.
    sub_rules: HashMap<String, String>,
}

/// Characters that are not literals in a regular expression.
fn non_literal(c: u8) -> bool {
    b"|.()[]{}*+?^$".contains(&c)
}

/// The length of a GBNF escape (`\x41`, `\n`, `\-`, …) at `i`, or 0.
fn gbnf_escape_length(p: &[u8], i: usize) -> usize {
    if p.get(i) != Some(&b'\\') {
        return 0;
    }
    let hex = match p.get(i + 1) {
        Some(b'x') => 2,
        Some(b'u') => 4,
        Some(b'U') => 8,
        Some(b't' | b'r' | b'n' | b'\\' | b'"' | b'[' | b']' | b'-') => return 2,
        _ => return 0,
    };
    match p.get(i + 2..i + 2 + hex) {
        Some(digits) if digits.iter().all(u8::is_ascii_hexdigit) => 2 + hex,
        _ => 0,
    }
}

/// A piece of a translated pattern: literal text (unquoted) or a rule expression.
type Piece = (String, bool);

fn piece_rule((s, is_literal): &Piece) -> String {
    if *is_literal {
        format!("\"{s}\"")
    } else {
        s.clone()
    }
}

impl Pattern<'_> {
    fn convert(conv: &mut Converter<'_>, pattern: &str, name: &str) -> std::result::Result<String, String> {
        let inner = pattern.strip_prefix('^').and_then(|p| p.strip_suffix('$')).filter(|_| pattern.len() >= 2);
        let inner = inner.ok_or("a pattern must start with `^` and end with `$`")?;
        let mut p = Pattern { p: inner.as_bytes(), i: 0, depth: 0, sub_rules: HashMap::new() };
        let rule = piece_rule(&p.sequence(conv, name)?);
        if p.depth != 0 {
            return Err("unbalanced parentheses".into());
        }
        Ok(conv.add_rule(name, format!("\"\\\"\" ({rule}) \"\\\"\"")))
    }

    fn sequence(&mut self, conv: &mut Converter<'_>, name: &str) -> std::result::Result<Piece, String> {
        let mut seq: Vec<Piece> = Vec::new();
        let p = self.p;
        while let Some(&c) = p.get(self.i) {
            match c {
                b'.' => {
                    seq.push((conv.add_rule("dot", "[^\\x0A\\x0D]".into()), false));
                    self.i += 1;
                }
                b'(' => {
                    self.i += 1;
                    if p.get(self.i) == Some(&b'?') {
                        if p.get(self.i + 1) == Some(&b':') {
                            self.i += 2;
                        } else {
                            return Err("lookarounds, named groups and inline flags are not supported".into());
                        }
                    }
                    self.depth += 1;
                    if self.depth > 100 {
                        return Err("groups nest too deep".into());
                    }
                    let inner = self.sequence(conv, name)?;
                    seq.push((format!("({})", piece_rule(&inner)), false));
                }
                b')' => {
                    self.i += 1;
                    if self.depth == 0 {
                        return Err("unbalanced parentheses".into());
                    }
                    self.depth -= 1;
                    return Ok(join(seq));
                }
                b'^' | b'$' => return Err("anchors inside the pattern are not supported".into()),
                b'[' => {
                    let mut class = vec![b'['];
                    self.i += 1;
                    while let Some(&d) = p.get(self.i).filter(|&&d| d != b']') {
                        if d == b'\\' {
                            let n = gbnf_escape_length(p, self.i);
                            if n == 0 {
                                return Err(format!("the escape `{}` in a character class is not supported", String::from_utf8_lossy(p.get(self.i..self.i + 2).unwrap_or(&p[self.i..]))));
                            }
                            class.extend_from_slice(&p[self.i..self.i + n]);
                            self.i += n;
                        } else {
                            class.push(d);
                            self.i += 1;
                        }
                    }
                    if self.i >= p.len() {
                        return Err("unterminated character class".into());
                    }
                    class.push(b']');
                    self.i += 1;
                    seq.push((String::from_utf8_lossy(&class).into_owned(), false));
                }
                b'|' => {
                    seq.push(("|".into(), false));
                    self.i += 1;
                }
                b'*' | b'+' | b'?' => {
                    let last = seq.last_mut().ok_or("nothing to repeat")?;
                    *last = (format!("{}{}", piece_rule(last), c as char), false);
                    self.i += 1;
                }
                b'{' => {
                    let start = self.i + 1;
                    let end = p[start..].iter().position(|&d| d == b'}').map(|e| start + e).ok_or("unterminated `{`")?;
                    let body = std::str::from_utf8(&p[start..end]).map_err(|_| "invalid `{}` quantifier")?;
                    self.i = end + 1;
                    let nums: Vec<&str> = body.split(',').collect();
                    let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| format!("invalid number in `{{{body}}}`"));
                    let (min, max) = match nums.as_slice() {
                        [n] => {
                            let n = parse(n)?;
                            (n, Some(n))
                        }
                        [a, b] => (if a.is_empty() { 0 } else { parse(a)? }, if b.is_empty() { None } else { Some(parse(b)?) }),
                        _ => return Err(format!("wrong number of values in `{{{body}}}`")),
                    };
                    if min > i32::MAX as u64 || max.is_some_and(|m| m > i32::MAX as u64 || m < min) {
                        return Err(format!("invalid quantifier `{{{body}}}`"));
                    }
                    let last = seq.last_mut().ok_or("nothing to repeat")?;
                    let item = if last.1 {
                        format!("\"{}\"", last.0)
                    } else {
                        let next = self.sub_rules.len() + 1;
                        match self.sub_rules.get(&last.0) {
                            Some(id) => id.clone(),
                            None => {
                                let id = conv.add_rule(&format!("{name}-{next}"), last.0.clone());
                                self.sub_rules.insert(last.0.clone(), id.clone());
                                id
                            }
                        }
                    };
                    *last = (repetition(&item, min, max, ""), false);
                }
                _ => {
                    let mut lit = String::new();
                    let mut bytes = Vec::new();
                    while let Some(&d) = p.get(self.i) {
                        if d == b'\\' {
                            let next = *p.get(self.i + 1).ok_or("trailing backslash")?;
                            if b"^$.[]()|{}*+?".contains(&next) {
                                bytes.push(next);
                                self.i += 2;
                            } else {
                                let n = gbnf_escape_length(p, self.i);
                                if n == 0 {
                                    return Err(format!("the escape `\\{}` is not supported", next as char));
                                }
                                bytes.extend_from_slice(&p[self.i..self.i + n]);
                                self.i += n;
                            }
                        } else if d == b'"' {
                            bytes.extend_from_slice(b"\\\"");
                            self.i += 1;
                        } else if !non_literal(d) && (self.i + 1 == p.len() || bytes.is_empty() || p.get(self.i + 1) == Some(&b'.') || !p.get(self.i + 1).is_some_and(|&n| non_literal(n))) {
                            bytes.push(d);
                            self.i += 1;
                        } else {
                            break;
                        }
                    }
                    if bytes.is_empty() {
                        return Err(format!("the character `{}` is not supported here", c as char));
                    }
                    lit.push_str(&String::from_utf8_lossy(&bytes));
                    seq.push((lit, true));
                }
            }
        }
        Ok(join(seq))
    }
}

/// Joins a sequence with spaces, merging adjacent literals.
fn join(seq: Vec<Piece>) -> Piece {
    let mut parts = Vec::new();
    let mut lit = String::new();
    for (s, is_literal) in seq {
        if is_literal {
            lit.push_str(&s);
        } else {
            if !lit.is_empty() {
                parts.push(format!("\"{}\"", std::mem::take(&mut lit)));
            }
            parts.push(s);
        }
    }
    if !lit.is_empty() {
        parts.push(format!("\"{lit}\""));
    }
    (parts.join(" "), false)
}
