//! candlewick beside llama.cpp (node-llama-cpp 3.21.1) at real scale: files with the exact
//! tensor names, shapes and type mixes of Qwen3-Coder-30B-A3B-Instruct Q4_K_M (17.28 GiB) and
//! of Kimi K2 at full width with 3 blocks (IQ1_S-style mix, ~9 GB), random weights, Qwen2.5's
//! tokenizer (tests/common/scale.rs).
//!
//! `make bench-scale` (builds `target/release/candlewick`, then `cargo bench --bench scale`).
//! The files are written once under `~/.cache/candlewick/scale/` (or `$CANDLEWICK_SCALE_DIR`)
//! and reused when their length and marker match. Each measurement is its own process —
//! `candlewick generate … --json` and `node tests/reference/bench.mjs` — alternating,
//! `SCALE_RUNS` times each (default 1), on `SCALE_THREADS` threads (default 2), with a
//! 128-token raw prompt and 32 generated tokens, each run after the file is read through (into
//! the page cache; `SCALE_WARM=0` skips that). Peak RSS is the process's maximum resident
//! set (`/usr/bin/time -v` for candlewick; Node's `resourceUsage().maxRSS` for llama.cpp),
//! file pages of the memory-mapped weights included.
//!
//! Arguments: `qwen3`, `kimi` (only those files), `--write-only`, `--llama-only`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use candlewick::Model;
use common::scale::{kimi, qwen3moe, tokenizer_source, Kimi, Plan, Qwen3Moe, Size};

/// Reads `path` through, so that each run starts with the file in the page cache as far as
/// memory allows (the acceptance's "load + first token" is measured warm): a run of llama.cpp
/// (whose repacked weights take memory beside the mapped file) or the kernel's reclaim evicts
/// a file of 17 GiB on 24 GiB, and the next run would otherwise time the disk. Prints nothing
/// unless the reading fails; `SCALE_WARM=0` skips it.
fn warm(path: &Path) {
    if std::env::var("SCALE_WARM").is_ok_and(|v| v == "0") {
        return;
    }
    use std::io::Read;
    let mut buf = vec![0u8; 8 << 20];
    let read = std::fs::File::open(path).and_then(|mut f| loop {
        if f.read(&mut buf)? == 0 {
            return Ok(());
        }
    });
    if let Err(e) = read {
        eprintln!("warming {}: {e}", path.display());
    }
}

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 32;
/// The seed of every scale file's random weights.
const SEED: u64 = 11;

/// One engine's figures for one run, or why it could not run.
#[derive(Clone, Debug, Default)]
struct Run {
    load_s: f64,
    load_and_first_s: f64,
    prompt_tokens: f64,
    completion_tokens: f64,
    prefill: f64,
    decode: f64,
    rss_gib: f64,
    error: Option<String>,
}

fn failed(message: impl Into<String>) -> Run {
    Run { error: Some(message.into()), ..Run::default() }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("CANDLEWICK_SCALE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("CANDLEWICK_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/candlewick"));
        cache.join("scale")
    })
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A raw prompt of exactly `PROMPT_TOKENS` tokens: ordinary prose cut to length, decoded back
/// to text (and checked to tokenize to the same ids).
fn prompt(path: &Path) -> (String, Vec<u32>) {
    let model = Model::open_without_weights(path).expect("open the header");
    let text = "The lighthouse stood at the edge of the cliff, and every night its keeper climbed the \
                narrow stairs to light the lamp. Ships passing in the dark relied on its beam to find \
                their way around the rocks. "
        .repeat(8);
    let mut ids = model.tokenizer().encode(&text, false, false).expect("tokenize");
    ids.truncate(PROMPT_TOKENS);
    let text = model.tokenizer().decode(&ids, false).expect("detokenize");
    let again = model.tokenizer().encode(&text, false, false).expect("tokenize");
    assert_eq!(again, ids, "the prompt's text tokenizes back to its {PROMPT_TOKENS} ids");
    (text, ids)
}

/// The `candlewick` binary built beside this bench (target/release/candlewick).
fn candlewick_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let release = exe.parent().and_then(Path::parent).expect("target/release");
    let bin = release.join("candlewick");
    assert!(bin.is_file(), "{} is missing: run `cargo build --release` first (make bench-scale does)", bin.display());
    bin
}

/// `Maximum resident set size (kbytes): N` from `/usr/bin/time -v`.
fn time_v_rss_gib(stderr: &str) -> f64 {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1048576.0)
}

fn candlewick(path: &Path, text: &str, threads: usize) -> Run {
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(candlewick_exe())
        .args(["generate", "--model"])
        .arg(path)
        .args(["--raw", "--prompt", text, "--temperature", "0", "--json"])
        .args(["--max-tokens", &DECODE_TOKENS.to_string(), "--threads", &threads.to_string()])
        .stdin(Stdio::null())
        .output();
    let wall = start.elapsed().as_secs_f64();
    let out = match out {
        Ok(out) => out,
        Err(e) => return failed(format!("could not run /usr/bin/time: {e}")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    if let Some(error) = lines.iter().find(|c| c["type"] == "error") {
        return failed(error["message"].as_str().unwrap_or("error").to_string());
    }
    let Some(complete) = lines.iter().find(|c| c["type"] == "complete") else {
        let why = stderr.lines().find(|l| l.starts_with("candlewick:")).or_else(|| stderr.lines().next()).unwrap_or("no output");
        return failed(why.trim_start_matches("candlewick:").trim().to_string());
    };
    let usage = &complete["usage"];
    let f = |k: &str| usage[k].as_f64().unwrap_or(0.0);
    let completion = f("completion_tokens");
    let decode_s = if f("decode_tokens_per_second") > 0.0 { (completion - 1.0) / f("decode_tokens_per_second") } else { 0.0 };
    let first_s = f("time_to_first_token_ms") / 1000.0;
    Run {
        load_s: wall - decode_s - first_s,
        load_and_first_s: wall - decode_s,
        prompt_tokens: f("prompt_tokens"),
        completion_tokens: completion,
        prefill: f("prefill_tokens_per_second"),
        decode: f("decode_tokens_per_second"),
        rss_gib: time_v_rss_gib(&stderr),
        error: None,
    }
}

fn llama_cpp(path: &Path, ids: &[u32], threads: usize) -> Run {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
    if !dir.join("node_modules/node-llama-cpp").is_dir() {
        return failed("node-llama-cpp is not installed: run `npm ci --prefix tests/reference`");
    }
    // The first sampled token counts as one of DECODE_TOKENS, as candlewick's --max-tokens does.
    let input = serde_json::json!({ "prompt": ids, "decode": DECODE_TOKENS - 1 }).to_string();
    let child = Command::new("node")
        .current_dir(&dir)
        .arg("bench.mjs")
        .arg(path)
        .arg(threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return failed(format!("could not run node: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return failed(format!("node: {e}")),
    };
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(_) => return failed(format!("no result ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""))),
    };
    if let Some(e) = v["error"].as_str() {
        return failed(e.to_string());
    }
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Run {
        load_s: f("load_ms") / 1000.0,
        load_and_first_s: f("first_token_ms") / 1000.0,
        prompt_tokens: f("prompt_tokens"),
        completion_tokens: f("completion_tokens"),
        prefill: f("prefill_tokens_per_second"),
        decode: f("decode_tokens_per_second"),
        rss_gib: f("peak_rss_mib") / 1024.0,
        error: None,
    }
}

fn print_run(engine: &str, run: &Run) {
    match &run.error {
        Some(e) => println!("  {engine:<10} | {engine}: {e}"),
        None => println!(
            "  {engine:<10} | {:>7.1} {:>9.1} | {:>4.0} {:>3.0} | {:>8.2} {:>8.2} | {:>7.2}",
            run.load_s, run.load_and_first_s, run.prompt_tokens, run.completion_tokens, run.prefill, run.decode, run.rss_gib
        ),
    }
}

/// The median of each figure over the runs without error.
fn median(runs: &[Run]) -> Option<Run> {
    let ok: Vec<&Run> = runs.iter().filter(|r| r.error.is_none()).collect();
    if ok.is_empty() {
        return None;
    }
    let mid = |get: fn(&Run) -> f64| {
        let mut v: Vec<f64> = ok.iter().map(|r| get(r)).collect();
        v.sort_by(f64::total_cmp);
        // Of an even count, the mean of the middle two.
        (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
    };
    Some(Run {
        load_s: mid(|r| r.load_s),
        load_and_first_s: mid(|r| r.load_and_first_s),
        prompt_tokens: mid(|r| r.prompt_tokens),
        completion_tokens: mid(|r| r.completion_tokens),
        prefill: mid(|r| r.prefill),
        decode: mid(|r| r.decode),
        rss_gib: mid(|r| r.rss_gib),
        error: None,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let write_only = args.iter().any(|a| a == "--write-only");
    let llama_only = args.iter().any(|a| a == "--llama-only");
    let picked: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with("--")).collect();
    let wants = |name: &str| picked.is_empty() || picked.contains(&name);
    let runs = env_usize("SCALE_RUNS", 1);
    let threads = env_usize("SCALE_THREADS", 2);

    let source_path = common::model(common::QWEN25_CODER);
    let source = tokenizer_source(&source_path);
    let dir = cache_dir();
    let mut files: Vec<(&str, PathBuf, Plan)> = Vec::new();
    if wants("qwen3") {
        let plan = qwen3moe(&source, &Qwen3Moe::coder(Size::Full), "Qwen3-Coder-30B-A3B-Instruct shape, random weights");
        files.push(("qwen3", dir.join("qwen3-coder-30b-a3b-shape-q4_k_m.gguf"), plan));
    }
    if wants("kimi") {
        let plan = kimi(&source, &Kimi::k2(Size::Full), "Kimi K2 shape (3 blocks), random weights");
        files.push(("kimi", dir.join("kimi-k2-3-blocks-shape-iq1_s.gguf"), plan));
    }
    for (name, path, plan) in &files {
        let bytes = plan.file_bytes(SEED);
        match plan.ensure(path, SEED) {
            Ok(None) => println!("{name}: reusing {} ({:.2} GiB)", path.display(), bytes as f64 / (1u64 << 30) as f64),
            Ok(Some(took)) => println!(
                "{name}: wrote {} ({:.2} GiB, {} tensors, {} parameters) in {:.0} s ({:.0} MB/s)",
                path.display(),
                bytes as f64 / (1u64 << 30) as f64,
                plan.tensors.len(),
                plan.parameters(),
                took.as_secs_f64(),
                bytes as f64 / took.as_secs_f64() / 1e6
            ),
            Err(e) => panic!("{name}: could not write {}: {e}", path.display()),
        }
    }
    if write_only {
        return;
    }

    println!(
        "\n{threads} threads, raw prompt of {PROMPT_TOKENS} tokens, {DECODE_TOKENS} tokens generated greedily, {runs} run(s) each, alternating; medians"
    );
    println!("  load: process start to weights ready; +1st: to the first generated token; RSS: peak, GiB");
    for (name, path, _) in &files {
        let (text, ids) = prompt(path);
        println!("\n{name}: {}", path.display());
        println!("  {:<10} | {:>7} {:>9} | {:>4} {:>3} | {:>8} {:>8} | {:>7}", "engine", "load s", "+1st s", "in", "out", "prefill", "decode", "RSS");
        let (mut cw, mut lc) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            if !llama_only {
                warm(path);
                let run = candlewick(path, &text, threads);
                print_run("candlewick", &run);
                cw.push(run);
            }
            warm(path);
            let run = llama_cpp(path, &ids, threads);
            print_run("llama.cpp", &run);
            lc.push(run);
        }
        if runs > 1 {
            println!("  medians:");
            for (engine, all) in [("candlewick", &cw), ("llama.cpp", &lc)] {
                if let Some(m) = median(all) {
                    print_run(engine, &m);
                }
            }
        }
        if let (Some(c), Some(l)) = (median(&cw), median(&lc)) {
            println!(
                "  ratio cw/lc | {:>7.2} {:>9.2} |          | {:>8.2} {:>8.2} | {:>7.2}",
                c.load_s / l.load_s,
                c.load_and_first_s / l.load_and_first_s,
                c.prefill / l.prefill,
                c.decode / l.decode,
                c.rss_gib / l.rss_gib
            );
        }
    }
}
