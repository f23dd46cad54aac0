//! Every `cargo run --release -- …` example in the README runs and succeeds (with the binary
//! the tests built, on the model the README names).

mod common;

use common::{model, repo_root, SMOLLM2};

/// Splits a shell command line into words, honouring single and double quotes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, ' ') => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (_, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

#[test]
fn readme_cli_examples_run() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let path = model(SMOLLM2);
    let examples: Vec<&str> = readme.lines().filter_map(|l| l.trim().strip_prefix("cargo run --release -- ")).collect();
    assert!(examples.len() >= 5, "the README lost its examples");
    for example in examples {
        let args: Vec<String> = words(example).into_iter().map(|w| if w == "$M" { path.display().to_string() } else { w }).collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_candlewick")).args(&args).output().unwrap();
        assert!(out.status.success(), "`{example}` failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stdout.is_empty(), "`{example}` printed nothing");
    }
}

#[test]
fn shell_words() {
    assert_eq!(words(r#"a "b c" 'd "e"' f"#), ["a", "b c", "d \"e\"", "f"]);
}
