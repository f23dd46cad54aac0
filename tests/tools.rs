//! Tool calls on a real model: Qwen2.5-Coder-0.5B-Instruct, offered tools through its chat
//! template and asked to call one, writes a call that arrives as a `ToolCall` chunk.

mod common;

use candlewick::chat::{Message, Role};
use candlewick::tools::{parse_tools, Tool};
use candlewick::{Chunk, Error, FinishReason, GenerateOptions, Model, Prompt, SamplingConfig, Session, ToolChoice};
use common::{model, QWEN25_CODER, SMOLLM2};
use serde_json::Value;

const TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name"}}, "required": ["city"]}}}]"#;

fn tools() -> Vec<Tool> {
    parse_tools(TOOLS).unwrap()
}

fn options(tool_choice: ToolChoice) -> GenerateOptions {
    GenerateOptions { max_tokens: 64, sampling: SamplingConfig::greedy(), tools: tools(), tool_choice, ..GenerateOptions::default() }
}

/// Checks the chunk contract and returns the calls, the text and the finish reason.
fn calls_of(chunks: &[Chunk]) -> (Vec<(String, String, Value)>, String, FinishReason) {
    let mut calls = Vec::new();
    let mut text = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        match chunk {
            Chunk::Text { text: t } => {
                assert!(!t.contains("<tool_call>") && !t.contains("\"arguments\""), "markup streamed as text: {t:?}");
                text.push_str(t);
            }
            Chunk::ToolCall { id, name, arguments } => {
                let arguments: Value = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("arguments {arguments:?} are not JSON: {e}"));
                assert!(arguments.is_object(), "{arguments}");
                calls.push((id.clone(), name.clone(), arguments));
            }
            Chunk::Complete { text: all, finish_reason, .. } => {
                assert_eq!(i, chunks.len() - 1, "complete is last");
                assert_eq!(all, &text);
                return (calls, text, *finish_reason);
            }
            Chunk::Error { message } => panic!("{message}"),
        }
    }
    panic!("no complete chunk: {chunks:?}")
}

fn assert_weather_call(chunks: &[Chunk]) -> String {
    let (calls, text, finish) = calls_of(chunks);
    assert_eq!(finish, FinishReason::ToolCalls, "{chunks:?}");
    assert_eq!(calls.len(), 1, "{chunks:?}");
    let (id, name, arguments) = &calls[0];
    assert_eq!(name, "get_weather");
    assert!(arguments["city"].as_str().is_some_and(|c| c.contains("Paris")), "{arguments}");
    assert!(text.trim().is_empty(), "{text:?}");
    id.clone()
}

const ASK: &str = "What is the weather in Paris? Use the get_weather tool.";

#[test]
fn qwen25_coder_calls_a_tool() {
    let model = Model::open(model(QWEN25_CODER)).unwrap();
    let chunks: Vec<Chunk> = model.generator(Prompt::User(ASK.into()), options(ToolChoice::Auto)).unwrap().collect();
    assert_eq!(assert_weather_call(&chunks), "call_0");

    // The same through the stream API.
    let streamed: Vec<Chunk> = futures::executor::block_on(futures::StreamExt::collect(model.generate(ASK, options(ToolChoice::Auto))));
    assert_weather_call(&streamed);

    // With `none`, no tool is offered and none is parsed.
    let chunks: Vec<Chunk> = model.generator(Prompt::User(ASK.into()), options(ToolChoice::None)).unwrap().collect();
    let (calls, _, finish) = calls_of(&chunks);
    assert!(calls.is_empty() && finish != FinishReason::ToolCalls, "{chunks:?}");

    // `required` and named choices need grammars: a typed error saying so.
    for choice in [ToolChoice::Required, ToolChoice::Function("get_weather".into())] {
        let err = model.generator(Prompt::User(ASK.into()), options(choice)).err().unwrap();
        assert!(matches!(err, Error::ToolChoiceNeedsGrammar { .. }), "{err}");
        assert!(err.to_string().contains("needs grammar support"), "{err}");
    }
}

/// A whole exchange in a session: the call, its result, the answer; each turn as a cold
/// generation of the same conversation writes it.
#[test]
fn qwen25_coder_tool_round_trip_in_a_session() {
    let model = Model::open(model(QWEN25_CODER)).unwrap();
    let mut session = Session::new(&model).unwrap();
    let chunks: Vec<Chunk> = session.generator(vec![Message::user(ASK)], options(ToolChoice::Auto)).unwrap().collect();
    let id = assert_weather_call(&chunks);
    let messages = session.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].role, Role::Assistant);
    assert_eq!(messages[1].tool_calls.len(), 1);
    assert_eq!(messages[1].tool_calls[0].id, id);

    let result = Message::tool(id.as_str(), r#"{"temperature_celsius": 21, "sky": "sunny"}"#);
    let mut conversation = messages.clone();
    conversation.push(result.clone());
    let cold: Vec<Chunk> = model.generator(Prompt::Messages(conversation), options(ToolChoice::Auto)).unwrap().collect();
    let turn: Vec<Chunk> = session.generator(vec![result], options(ToolChoice::Auto)).unwrap().collect();
    let strip = |chunks: &[Chunk]| -> Vec<Chunk> {
        chunks.iter().map(|c| match c {
            Chunk::Complete { text, finish_reason, stop, usage } => Chunk::Complete { text: text.clone(), finish_reason: *finish_reason, stop: stop.clone(), usage: candlewick::Usage { completion_tokens: usage.completion_tokens, ..Default::default() } },
            other => other.clone(),
        }).collect()
    };
    assert_eq!(strip(&turn), strip(&cold));
    let Some(Chunk::Complete { usage, .. }) = turn.last() else { panic!("{turn:?}") };
    assert!(usage.cached_tokens > 0);
    let (_, text, _) = calls_of(&turn);
    eprintln!("answer after the tool result: {text:?}");
    assert_eq!(session.messages().len(), 4);
}

/// Tool definitions and choices are checked before anything runs.
#[test]
fn bad_tools_are_clear_errors() {
    let model = Model::open(model(SMOLLM2)).unwrap();
    let bad = GenerateOptions { tools: vec![Tool::new("has space", "", serde_json::json!({}))], ..GenerateOptions::default() };
    assert!(matches!(model.generator("hi", bad), Err(Error::InvalidTools { .. })));
    let unknown = GenerateOptions { tools: tools(), tool_choice: ToolChoice::Function("nope".into()), ..GenerateOptions::default() };
    assert!(matches!(model.generator("hi", unknown), Err(Error::InvalidParameter { name: "tool_choice", .. })));
}

fn cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_candlewick"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn cli_prints_tool_calls_and_chats_in_one_session() {
    let dir = std::env::temp_dir().join(format!("candlewick-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools_file = dir.join("tools.json");
    std::fs::write(&tools_file, TOOLS).unwrap();
    let qwen = model(QWEN25_CODER);
    let (ok, out, err) = cli(&["generate", "--model", qwen.to_str().unwrap(), "--prompt", ASK, "--tools", tools_file.to_str().unwrap(), "--temperature", "0", "--max-tokens", "64", "--json"], "");
    assert!(ok, "{err}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let call = lines.iter().find(|l| l["type"] == "tool_call").unwrap_or_else(|| panic!("{out}"));
    assert_eq!(call["name"], "get_weather");
    assert!(serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap().is_object());
    assert_eq!(lines.last().unwrap()["finish_reason"], "tool_calls");

    let (ok, _, err) = cli(&["generate", "--model", qwen.to_str().unwrap(), "--prompt", ASK, "--tools", tools_file.to_str().unwrap(), "--tool-choice", "required"], "");
    assert!(!ok && err.contains("needs grammar support"), "{err}");
    std::fs::write(&tools_file, "[{\"name\": 3}]").unwrap();
    let (ok, _, err) = cli(&["generate", "--model", qwen.to_str().unwrap(), "--prompt", ASK, "--tools", tools_file.to_str().unwrap()], "");
    assert!(!ok && err.contains("invalid tools"), "{err}");

    // `chat`: one line, one turn, one session; each turn's complete chunk says what was cached.
    let smollm = model(SMOLLM2);
    let (ok, out, err) = cli(&["chat", "--model", smollm.to_str().unwrap(), "--temperature", "0", "--max-tokens", "12", "--json"], "Hello!\n\nWhat is a candle?\n");
    assert!(ok, "{err}");
    let completes: Vec<Value> = out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|l| l["type"] == "complete").collect();
    assert_eq!(completes.len(), 2, "{out}");
    assert_eq!(completes[0]["usage"]["cached_tokens"], 0);
    assert!(completes[1]["usage"]["cached_tokens"].as_u64().unwrap() > completes[0]["usage"]["prompt_tokens"].as_u64().unwrap() / 2, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
