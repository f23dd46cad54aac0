//! The JSON Schema converter writes the grammar llama.cpp's own converter writes: every case of
//! llama.cpp's `tests/test-json-schema-to-grammar.cpp` (schema → expected GBNF, or expected
//! failure) is run through `json_schema_to_gbnf`.
//!
//! The test file is taken at test time from llama.cpp's sources as the `llama-cpp-python` sdist
//! on PyPI vendors them (fetched once with pip into `~/.cache/candlewick/llama-cpp-python/`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use candlewick::grammar::json_schema_to_gbnf;
use candlewick::Grammar;

/// The llama-cpp-python release whose vendored llama.cpp the rules follow.
const SDIST: &str = "llama-cpp-python==0.3.36";
const TARBALL: &str = "llama_cpp_python-0.3.36.tar.gz";
const CASES: &str = "llama_cpp_python-0.3.36/vendor/llama.cpp/tests/test-json-schema-to-grammar.cpp";

fn cache_dir() -> PathBuf {
    let cache = std::env::var_os("CANDLEWICK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/candlewick"));
    cache.join("llama-cpp-python")
}

/// The text of llama.cpp's converter test, fetching the sdist first when it is not cached.
fn llama_cpp_cases_source() -> String {
    let dir = cache_dir();
    let tarball = dir.join(TARBALL);
    if !tarball.is_file() {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps", "--no-binary", "llama-cpp-python", "-d"])
            .arg(&dir)
            .arg(SDIST)
            .status()
            .unwrap_or_else(|e| panic!("could not run python3 -m pip ({e}): needs Python 3 with pip and access to PyPI"));
        assert!(status.success() && tarball.is_file(), "pip could not download {SDIST} (llama.cpp's sources, for its converter's test cases) into {}", dir.display());
    }
    let out = Command::new("tar").arg("xzf").arg(&tarball).arg("-O").arg(CASES).output().expect("tar runs");
    assert!(out.status.success(), "{CASES} is not in {}: {}", tarball.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("the test file is UTF-8")
}

struct Case {
    success: bool,
    name: String,
    schema: String,
    grammar: String,
}

/// The `test({ SUCCESS|FAILURE, "name", R"""(schema)""", R"""(grammar)""" })` cases.
fn parse_cases(src: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    for block in src.split("test({").skip(1) {
        let block = block.trim_start();
        let (success, rest) = match block.split_once(',') {
            Some(("SUCCESS", rest)) => (true, rest),
            Some(("FAILURE", rest)) => (false, rest),
            _ => continue,
        };
        let Some(rest) = rest.trim_start().strip_prefix('"') else { continue };
        let Some((name, rest)) = rest.split_once('"') else { continue };
        let mut raws = rest.split("R\"\"\"(").skip(1).map(|r| r.split(")\"\"\"").next().unwrap_or_default());
        let (Some(schema), Some(grammar)) = (raws.next(), raws.next()) else { continue };
        cases.push(Case { success, name: name.to_string(), schema: schema.to_string(), grammar: grammar.to_string() });
    }
    cases
}

/// Cases llama.cpp converts with a warning, accepting any string where the pattern cannot be
/// translated; candlewick refuses them instead, naming the pattern (an unsupported feature is an
/// error, never silently widened).
const REFUSED_ON_PURPOSE: [&str; 3] = ["unanchored regexp", "regexp with unsupported shorthand", "unsupported regexp in a property"];

/// llama.cpp's test compares texts trimmed, with each line's indentation removed.
fn trim(text: &str) -> String {
    text.trim().lines().map(str::trim_start).collect::<Vec<_>>().join("\n")
}

#[test]
fn converter_matches_llama_cpp_test_cases() {
    let cases = parse_cases(&llama_cpp_cases_source());
    assert!(cases.len() >= 70, "found only {} test cases in {CASES}", cases.len());
    let mut equal = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let schema: Result<serde_json::Value, _> = serde_json::from_str(&case.schema);
        let ours = schema.map_err(|e| e.to_string()).and_then(|s| json_schema_to_gbnf(&s).map_err(|e| e.to_string()));
        match (case.success, ours) {
            (true, Ok(grammar)) if trim(&grammar) == trim(&case.grammar) => {
                Grammar::parse(&grammar).unwrap_or_else(|e| panic!("{}: our grammar does not parse: {e}\n{grammar}", case.name));
                equal += 1;
            }
            (false, Err(_)) => equal += 1,
            (true, Ok(grammar)) => failures.push(format!("{}: differs\n  want:\n{}\n  ours:\n{}", case.name, trim(&case.grammar), trim(&grammar))),
            (true, Err(e)) if REFUSED_ON_PURPOSE.contains(&case.name.as_str()) && e.contains("/pattern") => equal += 1,
            (true, Err(e)) => failures.push(format!("{}: we refuse it: {e}", case.name)),
            (false, Ok(grammar)) => failures.push(format!("{}: llama.cpp refuses it, we wrote\n{grammar}", case.name)),
        }
    }
    println!("{equal} of {} llama.cpp converter cases equal ({} of them refused on purpose)", cases.len(), REFUSED_ON_PURPOSE.len());
    for f in &failures {
        println!("{f}\n");
    }
    assert!(failures.is_empty(), "{} of {} cases differ (printed above)", failures.len(), cases.len());
}
