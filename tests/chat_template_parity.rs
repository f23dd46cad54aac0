//! Chat prompts rendered from each model's own template equal what Python's Jinja2 renders
//! (as Hugging Face transformers renders them) from the same template.

mod common;

use candlewick::chat::{ChatTemplate, Message};
use candlewick::tools::{Tool, ToolCall};
use candlewick::{Error, Model};
use common::{jinja2, model, GEMMA3, QWEN25_CODER, SMOLLM2};
use serde_json::json;

fn conversations() -> Vec<Vec<Message>> {
    vec![
        vec![Message::user("What is the capital of France?")],
        vec![Message::system("You are a terse assistant. Answer in one word."), Message::user("Name a primary colour.")],
        vec![
            Message::system("You write Python."),
            Message::user("Write a function that adds two numbers."),
            Message::assistant("def add(a, b):\n    return a + b"),
            Message::user("Now  make it   subtract.\n\nThanks! 😀 “quoted” <b>html</b>"),
        ],
        vec![Message::user("  leading and trailing whitespace \n")],
    ]
}

fn check(which: (&str, &str)) {
    let model = Model::open(model(which)).unwrap();
    let source = model.gguf().str("tokenizer.chat_template").unwrap().to_string();
    let tok = model.tokenizer();
    let bos = tok.bos().and_then(|id| tok.token_text(id)).unwrap_or_default().to_string();
    let eos = tok.eos().and_then(|id| tok.token_text(id)).unwrap_or_default().to_string();
    let template = model.chat_template().unwrap();
    for messages in conversations() {
        for add_generation_prompt in [true, false] {
            let ours = template.render(&messages, add_generation_prompt).unwrap();
            let python = jinja2(&json!({
                "template": source,
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "bos_token": bos,
                "eos_token": eos,
            }));
            assert_eq!(ours, python["rendered"].as_str().unwrap(), "{}: {messages:?} (generation prompt: {add_generation_prompt})", which.1);
        }
    }
}

fn tools() -> Vec<Tool> {
    candlewick::tools::parse_tools(
        r#"[{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}},
            {"name": "search", "description": "Searches the web for “quotes” & <tags>", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]"#,
    )
    .unwrap()
}

/// Conversations with tool calls and their results.
fn tool_conversations() -> Vec<Vec<Message>> {
    let call = |id: &str, name: &str, arguments: &str| ToolCall::new(id, name, arguments);
    vec![
        vec![Message::user("What is the weather in Paris?")],
        vec![
            Message::system("You are a weather bot."),
            Message::user("Weather in Paris and Oslo, and news about both?"),
            Message::assistant_calls("Let me check.", vec![call("call_0", "get_weather", r#"{"city": "Paris"}"#), call("call_1", "get_weather", r#"{"city": "Oslo", "days": 2}"#)]),
            Message::tool("call_0", "{\"temperature\": 21}"),
            Message::tool("call_1", "{\"temperature\": 9}"),
            Message::assistant_calls("", vec![call("call_2", "search", r#"{"query": "Paris Oslo news"}"#)]),
            Message::tool("call_2", "Nothing new."),
            Message::assistant("Paris is 21 °C, Oslo 9 °C; no news."),
            Message::user("Thanks!"),
        ],
    ]
}

/// With tools: the template gets them as `tools`, tool calls with object arguments, and tool
/// results, as Hugging Face hands them over; a template that does not read `tools` gets them
/// described in a system message.
fn check_tools(which: (&str, &str)) {
    let model = Model::open(model(which)).unwrap();
    let source = model.gguf().str("tokenizer.chat_template").unwrap().to_string();
    let tok = model.tokenizer();
    let text = |id: Option<u32>| id.and_then(|id| tok.token_text(id)).unwrap_or_default().to_string();
    let template = model.chat_template().unwrap();
    let tools = tools();
    let tool_values: Vec<serde_json::Value> = tools.iter().map(Tool::to_template_value).collect();
    for messages in tool_conversations() {
        let ours = template.render_with_tools(&messages, &tools, true).unwrap();
        let mut values: Vec<serde_json::Value> = messages.iter().map(Message::to_template_value).collect();
        let python_tools = if source.contains("tools") {
            json!(tool_values)
        } else {
            // What a template without tools is given instead.
            let described = candlewick::tools::generic_system_prompt(&tools);
            match values[0]["role"].as_str() {
                Some("system") => values[0]["content"] = format!("{}\n\n{described}", values[0]["content"].as_str().unwrap()).into(),
                _ => values.insert(0, json!({"role": "system", "content": described})),
            }
            json!(null)
        };
        let python = jinja2(&json!({
            "template": source,
            "messages": values,
            "tools": python_tools,
            "add_generation_prompt": true,
            "bos_token": text(tok.bos()),
            "eos_token": text(tok.eos()),
        }));
        assert_eq!(ours, python["rendered"].as_str().unwrap(), "{}: {messages:?}", which.1);
        if source.contains("tools") {
            assert!(ours.contains("get_weather") && ours.contains("<tools>"), "{ours}");
        }
    }
    // The arguments reach the template as an object (Qwen2.5 writes them with `tojson`).
    let rendered = template.render_with_tools(&tool_conversations()[1], &tools, true).unwrap();
    if which == QWEN25_CODER {
        assert!(rendered.contains(r#"{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}"#), "{rendered}");
        assert!(rendered.contains("<tool_response>\n{\"temperature\": 9}\n</tool_response>"), "{rendered}");
    }
}

#[test]
fn qwen25_coder_renders_tools_like_jinja2() {
    check_tools(QWEN25_CODER);
}

#[test]
fn smollm2_renders_tools_like_jinja2() {
    check_tools(SMOLLM2);
}

#[test]
fn smollm2_chat_renders_like_jinja2() {
    check(SMOLLM2);
}

#[test]
fn qwen25_coder_chat_renders_like_jinja2() {
    check(QWEN25_CODER);
}

/// The rendered prompt is tokenized with special tokens recognised, and BOS is never doubled.
#[test]
fn chat_tokens_parse_special_tokens_without_double_bos() {
    let model = Model::open(model(QWEN25_CODER)).unwrap();
    let ids = model.chat_tokens(&[Message::user("hi")]).unwrap();
    let im_start = model.tokenizer().encode("<|im_start|>", false, true).unwrap();
    assert_eq!(im_start.len(), 1);
    assert_eq!(ids[0], im_start[0]);
    assert_eq!(ids.iter().filter(|&&t| t == im_start[0]).count(), 3, "system, user and assistant headers");

    // A template that writes BOS itself, on a model that adds BOS: exactly one BOS.
    let gemma = Model::open(common::model(GEMMA3)).unwrap();
    let tok = gemma.tokenizer();
    assert!(tok.adds_bos());
    let bos = tok.bos().unwrap();
    let template = ChatTemplate::new("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}", tok.token_text(bos).unwrap().into(), String::new()).unwrap();
    let rendered = template.render(&[Message::user("hello")], true).unwrap();
    let ids = candlewick::chat::tokenize_rendered(tok, &rendered).unwrap();
    assert_eq!(ids.iter().filter(|&&t| t == bos).count(), 1, "{ids:?}");
    assert_eq!(ids[0], bos);
    // Without BOS in the template, it is added once.
    let ids = candlewick::chat::tokenize_rendered(tok, "hello").unwrap();
    assert_eq!(ids[0], bos);
}

/// Gemma 3's file carries no template: chat use is a clear error, raw prompts still tokenize.
#[test]
fn model_without_template_is_a_clear_error_for_chat() {
    let model = Model::open(model(GEMMA3)).unwrap();
    assert!(matches!(model.render_chat(&[Message::user("hi")]), Err(Error::NoChatTemplate)));
    assert!(!model.tokenizer().encode("hi", true, false).unwrap().is_empty());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_candlewick"))
        .args(["template", "--model", common::model(GEMMA3).to_str().unwrap(), "--messages", r#"[{"role":"user","content":"hi"}]"#])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no chat template"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `candlewick template` prints what the library renders.
#[test]
fn cli_template_prints_the_rendered_prompt() {
    let path = model(SMOLLM2);
    let messages = r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi!"}]"#;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_candlewick"))
        .args(["template", "--model", path.to_str().unwrap(), "--messages", messages])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let model = Model::open(&path).unwrap();
    let want = model.render_chat(&candlewick::chat::parse_messages(messages).unwrap()).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
    assert!(want.ends_with("<|im_start|>assistant\n"), "{want:?}");
}

/// A tool-calling template from tests/data (as llama.cpp keeps them in models/templates) renders
/// tools, calls and results as Jinja2 does, is recognised as `format`, and the calls it writes
/// back in the conversation after its first `<|im_end|>` parse to the calls it was given (their
/// values typed by the tools' schemas); returns the parsed calls' ids.
fn check_tool_template(file: &str, format: candlewick::tools::ToolFormat) -> Vec<Option<String>> {
    use candlewick::tools::{Parsed, ToolCallParser};
    let source = std::fs::read_to_string(common::repo_root().join("tests/data").join(file)).unwrap();
    let template = ChatTemplate::new(&source, String::new(), "<|im_end|>".into()).unwrap();
    assert_eq!(template.tool_format(), format);
    let tools = tools();
    let tool_values: Vec<serde_json::Value> = tools.iter().map(Tool::to_template_value).collect();
    for messages in tool_conversations() {
        let ours = template.render_with_tools(&messages, &tools, true).unwrap();
        let values: Vec<serde_json::Value> = messages.iter().map(Message::to_template_value).collect();
        let python = jinja2(&json!({"template": source, "messages": values, "tools": tool_values, "add_generation_prompt": true, "bos_token": "", "eos_token": "<|im_end|>"}));
        assert_eq!(ours, python["rendered"].as_str().unwrap(), "{file}: {messages:?}");
    }
    let conversation = &tool_conversations()[1];
    let rendered = template.render_with_tools(conversation, &tools, false).unwrap();
    // The conversation after the first message (Qwen3-Coder's instructions show an example call).
    let turns = &rendered[rendered.find("<|im_end|>").unwrap()..];
    let mut parser = ToolCallParser::new(format, tools.clone());
    let mut parsed = parser.push(turns);
    parsed.extend(parser.finish());
    let (mut calls, mut ids) = (Vec::new(), Vec::new());
    for p in parsed {
        if let Parsed::Call { id, name, arguments } = p {
            calls.push((name, serde_json::from_str::<serde_json::Value>(&arguments).unwrap()));
            ids.push(id);
        }
    }
    let given: Vec<(String, serde_json::Value)> =
        conversation.iter().flat_map(|m| &m.tool_calls).map(|c| (c.function.name.clone(), serde_json::from_str(&c.function.arguments).unwrap())).collect();
    assert_eq!(calls, given, "{rendered}");
    ids
}

#[test]
fn qwen3_coder_template_renders_like_jinja2_and_its_calls_parse_back() {
    check_tool_template("qwen3-coder.jinja", candlewick::tools::ToolFormat::Qwen3Coder);
}

#[test]
fn kimi_k2_template_renders_like_jinja2_and_its_calls_parse_back() {
    let ids = check_tool_template("kimi-k2.jinja", candlewick::tools::ToolFormat::KimiK2);
    // Kimi K2 numbers calls within each message, and the ids come back as written.
    assert_eq!(ids, [Some("functions.get_weather:0".into()), Some("functions.get_weather:1".into()), Some("functions.search:0".into())]);
}
