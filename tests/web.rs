//! The JavaScript API (src/web.rs) compiled to wasm32 and run in Node.js by
//! wasm-bindgen-test on a real model: load from bytes, stream, cancel, corrupt bytes.
//!
//! `make wasm-test` runs it (wasm-bindgen-test-runner as the cargo runner). The model comes
//! from `$CANDLEWICK_CACHE/models` (default `~/.cache/candlewick/models`; `make models`).
#![cfg(target_arch = "wasm32")]

use candlewick::web::{iterate, JsGenerateOptions, WebModel};
use js_sys::{Function, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen(module = "node:fs")]
extern "C" {
    #[wasm_bindgen(js_name = readFileSync, catch)]
    fn read_file_sync(path: &str) -> Result<Uint8Array, JsValue>;
}

#[path = "common/patch.rs"]
mod patch;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn env(name: &str) -> Option<String> {
    let process = Reflect::get(&js_sys::global(), &"process".into()).ok()?;
    let env = Reflect::get(&process, &"env".into()).ok()?;
    Reflect::get(&env, &name.into()).ok()?.as_string()
}

/// The bytes of a model file, or a panic that says how to fetch it.
fn model_bytes(file: &str) -> Uint8Array {
    let cache = env("CANDLEWICK_CACHE").unwrap_or_else(|| format!("{}/.cache/candlewick", env("HOME").unwrap_or_default()));
    let path = format!("{cache}/models/{file}");
    read_file_sync(&path).unwrap_or_else(|e| panic!("cannot read {path} ({e:?}): run `make models` to fetch it"))
}

fn get(object: &JsValue, key: &str) -> JsValue {
    Reflect::get(object, &key.into()).unwrap()
}

fn call(object: &JsValue, method: &str, args: &[JsValue]) -> JsValue {
    let function: Function = get(object, method).dyn_into().unwrap();
    Reflect::apply(&function, object, &args.iter().collect()).unwrap()
}

async fn settle(promise: JsValue) -> Result<JsValue, JsValue> {
    JsFuture::from(Promise::from(promise)).await
}

fn options(fields: &[(&str, JsValue)]) -> JsGenerateOptions {
    let object = Object::new();
    for (key, value) in fields {
        Reflect::set(&object, &(*key).into(), value).unwrap();
    }
    object.unchecked_into()
}

async fn load_smollm2() -> WebModel {
    WebModel::load(model_bytes(SMOLLM2).into(), None).await.unwrap_or_else(|e| panic!("load failed: {e:?}"))
}

/// Every chunk of a stream, read to its end.
async fn read_all(stream: JsValue) -> Vec<JsValue> {
    let reader = call(&stream, "getReader", &[]);
    let mut chunks = Vec::new();
    loop {
        let result = settle(call(&reader, "read", &[])).await.unwrap();
        if get(&result, "done").as_bool() == Some(true) {
            return chunks;
        }
        chunks.push(get(&result, "value"));
    }
}

#[wasm_bindgen_test]
async fn loads_from_bytes_and_streams_text_then_complete() {
    let model = load_smollm2().await;
    let info = model.info().unwrap();
    assert_eq!(get(&info, "architecture").as_string().as_deref(), Some("llama"));
    assert_eq!(get(&info, "vocabSize").as_f64(), Some(49152.0));

    let stream = model.generate("What is a candle wick?".into(), Some(options(&[("maxTokens", 12.into()), ("temperature", 0.into())]))).unwrap();
    let chunks = read_all(stream).await;
    let (last, texts) = chunks.split_last().expect("chunks");
    assert!(!texts.is_empty());
    let mut streamed = String::new();
    for chunk in texts {
        assert_eq!(get(chunk, "type").as_string().as_deref(), Some("text"));
        streamed += &get(chunk, "text").as_string().unwrap();
    }
    assert_eq!(get(last, "type").as_string().as_deref(), Some("complete"));
    assert_eq!(get(last, "text").as_string().unwrap(), streamed);
    assert_eq!(get(last, "finishReason").as_string().as_deref(), Some("length"));
    let usage = get(last, "usage");
    assert_eq!(get(&usage, "completionTokens").as_f64(), Some(12.0));
    assert!(get(&usage, "promptTokens").as_f64().unwrap() > 5.0);
    assert!(get(&usage, "decodeTokensPerSecond").as_f64().unwrap() > 0.0);
}

#[wasm_bindgen_test]
async fn cancelling_the_reader_mid_stream_ends_the_generation() {
    let model = load_smollm2().await;
    let stream = model.generate("Write a long story about a lighthouse keeper.".into(), Some(options(&[("maxTokens", 200.into())]))).unwrap();
    let reader = call(&stream, "getReader", &[]);
    for _ in 0..3 {
        let result = settle(call(&reader, "read", &[])).await.unwrap();
        assert_eq!(get(&get(&result, "value"), "type").as_string().as_deref(), Some("text"));
    }
    settle(call(&reader, "cancel", &[])).await.unwrap();
    // A cancelled stream reports done at once: no further token is generated.
    let after = settle(call(&reader, "read", &[])).await.unwrap();
    assert_eq!(get(&after, "done").as_bool(), Some(true));
}

#[wasm_bindgen_test]
async fn leaving_an_iterate_loop_early_cancels_the_stream() {
    let model = load_smollm2().await;
    let stream = model.generate("Count from one to one hundred.".into(), Some(options(&[("maxTokens", 100.into())]))).unwrap();
    let iterator = iterate(stream.clone());
    let first = settle(call(&iterator, "next", &[])).await.unwrap();
    assert_eq!(get(&first, "done").as_bool(), Some(false));
    let returned = settle(call(&iterator, "return", &[])).await.unwrap();
    assert_eq!(get(&returned, "done").as_bool(), Some(true));
    assert_eq!(get(&stream, "locked").as_bool(), Some(false), "the reader is released");
}

#[wasm_bindgen_test]
async fn corrupt_and_truncated_bytes_are_rejected_with_the_rust_message() {
    let bytes = model_bytes(SMOLLM2);
    let truncated = bytes.subarray(0, 100_000);
    let error = WebModel::load(truncated.into(), None).await.err().expect("a truncated file is rejected");
    let message = get(&error, "message").as_string().unwrap();
    assert!(error.is_instance_of::<js_sys::Error>());
    assert!(message.contains("truncated"), "{message}");

    let corrupt = Uint8Array::new_with_length(4096);
    corrupt.copy_from(&[0x47; 4096]);
    let error = WebModel::load(corrupt.into(), None).await.err().expect("corrupt bytes are rejected");
    let message = get(&error, "message").as_string().unwrap();
    assert!(message.contains("GGUF"), "{message}");

    let error = WebModel::load(JsValue::from(42), None).await.err().expect("a number is not a source");
    assert!(error.is_instance_of::<js_sys::TypeError>());
}

#[wasm_bindgen_test]
async fn bad_options_throw_before_any_work() {
    let model = load_smollm2().await;
    for (key, value, needle) in [("topP", JsValue::from(1.5), "top_p"), ("maxTokens", JsValue::from(-1), "maxTokens"), ("temprature", JsValue::from(1), "unknown option")] {
        let error = model.generate("Hi".into(), Some(options(&[(key, value)]))).err().unwrap_or_else(|| panic!("{key} is rejected"));
        let message = get(&error, "message").as_string().unwrap();
        assert!(message.contains(needle), "{key}: {message}");
    }
}

/// SmolLM2's bytes with `edit` applied to its header.
fn patched_smollm2(edit: impl FnOnce(&mut [u8])) -> JsValue {
    let mut file = model_bytes(SMOLLM2).to_vec();
    edit(&mut file);
    Uint8Array::from(&file[..]).into()
}

/// In wasm32 `usize` is 32 bits: a `maxTokens` of 2^53 − 1 (or 1e12) once wrapped prompt +
/// max tokens to a context shorter than the prompt. It runs to the end of the context now.
#[wasm_bindgen_test]
async fn huge_max_tokens_run_to_the_end_of_the_context() {
    let model = WebModel::load(patched_smollm2(|f| patch::set_u32(f, "llama.context_length", 40)), None).await.unwrap();
    for max_tokens in [9_007_199_254_740_991.0, 1e12] {
        let fields = [("maxTokens", max_tokens.into()), ("temperature", 0.into()), ("raw", true.into())];
        let chunks = read_all(model.generate("One, two, three, four,".into(), Some(options(&fields))).unwrap()).await;
        let last = chunks.last().unwrap();
        assert_eq!(get(last, "finishReason").as_string().as_deref(), Some("length"), "maxTokens {max_tokens}");
        let usage = get(last, "usage");
        let total = get(&usage, "promptTokens").as_f64().unwrap() + get(&usage, "completionTokens").as_f64().unwrap();
        // The last token comes from the logits at position 40 and is never fed back.
        assert_eq!(total, 41.0, "maxTokens {max_tokens}");
    }
}

#[wasm_bindgen_test]
async fn a_context_length_of_2_to_the_32_is_refused_in_words() {
    let model = load_smollm2().await;
    let error = model.generate("Hi".into(), Some(options(&[("contextLength", 4_294_967_296.0.into())]))).err().expect("refused");
    let message = get(&error, "message").as_string().unwrap();
    assert!(message.contains("beyond the model's context length 8192"), "{message}");
}

/// Sizes past 32 bits, and offsets past the end, are errors in words, not wrapped or trapped.
#[wasm_bindgen_test]
async fn tensors_past_the_end_or_too_large_are_refused_in_words() {
    let cases: [(&str, fn(&mut [u8])); 4] = [
        ("an element count over 2^32", |f| patch::set_dim(f, "blk.0.attn_q.weight", 1, (1 << 32) + 1)),
        ("an element count over 2^64", |f| patch::set_dim(f, "blk.0.attn_q.weight", 1, u64::MAX / 2)),
        ("an offset past the end", |f| patch::set_offset(f, "output_norm.weight", 1 << 40)),
        ("an offset that wraps", |f| patch::set_offset(f, "output_norm.weight", u64::MAX - 31)),
    ];
    for (what, edit) in cases {
        let error = WebModel::load(patched_smollm2(edit), None).await.err().unwrap_or_else(|| panic!("{what}: loaded"));
        let message = get(&error, "message").as_string().unwrap();
        assert!(message.contains("truncated") || message.contains("impossible dimensions"), "{what}: {message}");
    }
}

#[wasm_bindgen_test]
async fn no_messages_are_refused_in_words() {
    let model = load_smollm2().await;
    let error = model.generate(js_sys::Array::new().into(), None).err().expect("an empty conversation is refused");
    let message = get(&error, "message").as_string().unwrap();
    assert!(message.contains("no messages"), "{message}");
}
