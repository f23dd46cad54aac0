//! Helpers shared by the integration tests: where the real models are, the llama.cpp and
//! Jinja2 references, and a writer for small synthetic GGUF files.
#![allow(dead_code)]

pub mod agreement;
pub mod gguf_writer;
pub mod patch;
pub mod quants;
pub mod scale;
pub mod synthetic;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The real models the tests run on: (name for scripts/fetch-models.sh, file name).
pub const SMOLLM2: (&str, &str) = ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf");
pub const QWEN25_CODER: (&str, &str) = ("qwen25coder", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
pub const GEMMA3: (&str, &str) = ("gemma3", "gemma-3-270m-q4_k_m.gguf");

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CANDLEWICK_MODELS") {
        return dir.into();
    }
    let cache = std::env::var_os("CANDLEWICK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/candlewick"));
    cache.join("models")
}

/// The path of a real model; fails the test with what to run when it is missing.
pub fn model(which: (&str, &str)) -> PathBuf {
    let path = models_dir().join(which.1);
    assert!(
        path.is_file(),
        "model {} is missing at {}: run `scripts/fetch-models.sh {}` (or `make models`)",
        which.1,
        path.display(),
        which.0
    );
    path
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args…` with `input` on stdin and parses its stdout as JSON.
fn run_json(mut command: Command, input: &serde_json::Value, hint: &str) -> serde_json::Value {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start the reference ({e}): {hint}"));
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference failed: {}\n{hint}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("the reference printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs a script of tests/reference under Node.js with llama.cpp (node-llama-cpp) installed.
pub fn llama_cpp(script: &str, args: &[&str], input: &serde_json::Value) -> serde_json::Value {
    let dir = repo_root().join("tests/reference");
    assert!(
        dir.join("node_modules/node-llama-cpp").is_dir(),
        "llama.cpp reference is not installed: run `npm ci --prefix tests/reference` (or `make reference`)"
    );
    let mut command = Command::new("node");
    command.current_dir(&dir).arg(script).args(args);
    run_json(command, input, "needs Node.js 20 and `npm ci --prefix tests/reference`")
}

/// Runs a script of tests/node, which uses the npm package built into pkg/.
pub fn wasm_package(script: &str, input: &serde_json::Value) -> serde_json::Value {
    assert!(repo_root().join("pkg/node.js").is_file(), "the npm package is not built: run `make pkg`");
    let mut command = Command::new("node");
    command.arg(repo_root().join("tests/node").join(script));
    run_json(command, input, "needs Node.js 20 and the package in pkg/ (`make pkg`)")
}

/// Renders a chat template with Python's Jinja2, as Hugging Face does.
pub fn jinja2(input: &serde_json::Value) -> serde_json::Value {
    let mut command = Command::new("python3");
    command.arg(repo_root().join("tests/reference/render_template.py"));
    run_json(command, input, "needs python3 with jinja2: `python3 -m pip install jinja2`")
}

/// Raw prompts the greedy comparisons with llama.cpp run.
pub const RAW_PROMPTS: [&str; 8] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "1, 2, 3, 4, 5,",
    "To make a cup of tea, first",
    "The quick brown fox",
    "In 1969, the first humans",
];

/// The tokenizer test corpus.
pub fn corpus() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("tests/data/tokenizer-corpus.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

/// Runs a Python script of tests/reference (which needs the package `gguf` or `jinja2`).
pub fn python(script: &str, input: &serde_json::Value) -> serde_json::Value {
    let mut command = Command::new("python3");
    command.arg(repo_root().join("tests/reference").join(script));
    run_json(command, input, "needs python3 with the packages gguf and jinja2: `make python-deps`")
}
