//! Chat prompts rendered from each model's own template equal what Python's Jinja2 renders
//! (as Hugging Face transformers renders them) from the same template.

mod common;

use candlewick::chat::{ChatTemplate, Message};
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
