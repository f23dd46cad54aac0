//! Prefill and decode speed and peak memory of candlewick beside llama.cpp (node-llama-cpp
//! 3.21.1), on the same file, the same prompt tokens and the same thread count, in one run.
//!
//! `cargo bench --bench compare` (or `make bench`). Each measurement runs in its own process,
//! so peak RSS is that run's alone. Figures are medians of `RUNS` runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use candlewick::{Chunk, GenerateOptions, Model, Prompt, SamplingConfig};

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 64;
const RUNS: usize = 3;

#[derive(Clone, Copy, Default)]
struct Figures {
    prefill: f64,
    decode: f64,
    rss_mib: f64,
}

fn models_dir() -> PathBuf {
    let cache = std::env::var_os("CANDLEWICK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/candlewick"));
    cache.join("models")
}

/// 128 prompt tokens of ordinary English prose, cut to length.
fn prompt_tokens(model: &Model) -> Vec<u32> {
    let text = "The lighthouse stood at the edge of the cliff, and every night its keeper climbed the \
                narrow stairs to light the lamp. Ships passing in the dark relied on its beam to find \
                their way around the rocks. "
        .repeat(8);
    let mut ids = model.tokenizer().encode(&text, true, false).expect("tokenize");
    ids.truncate(PROMPT_TOKENS);
    ids
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

/// The child process: one candlewick measurement, printed as JSON.
fn child(path: &Path) {
    let model = Model::open(path).expect("open model");
    let prompt = prompt_tokens(&model);
    let options = GenerateOptions { max_tokens: DECODE_TOKENS + 1, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() };
    let mut generator = model.generator(Prompt::Tokens(prompt), options).expect("generator");
    let mut usage = None;
    while let Some(chunk) = generator.next_chunk() {
        if let Chunk::Complete { usage: u, .. } = chunk {
            usage = Some(u);
        }
    }
    let usage = usage.expect("the generation completed");
    println!(
        "{{\"prefill_tokens_per_second\":{},\"decode_tokens_per_second\":{},\"peak_rss_mib\":{}}}",
        usage.prefill_tokens_per_second,
        usage.decode_tokens_per_second,
        peak_rss_mib()
    );
}

fn parse(out: &[u8]) -> Figures {
    let v: serde_json::Value = serde_json::from_slice(out).unwrap_or_else(|_| panic!("bad output: {}", String::from_utf8_lossy(out)));
    assert!(v.get("error").is_none(), "llama.cpp failed: {}", v["error"]);
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Figures { prefill: f("prefill_tokens_per_second"), decode: f("decode_tokens_per_second"), rss_mib: f("peak_rss_mib") }
}

fn median(mut runs: Vec<Figures>) -> Figures {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let field = |get: fn(&Figures) -> f64| mid(runs.iter().map(get).collect());
    let m = Figures { prefill: field(|f| f.prefill), decode: field(|f| f.decode), rss_mib: field(|f| f.rss_mib) };
    runs.clear();
    m
}

fn candlewick(path: &Path, threads: usize) -> Figures {
    let exe = std::env::current_exe().expect("current exe");
    median(
        (0..RUNS)
            .map(|_| {
                let out = Command::new(&exe).arg("--child").arg(path).env("RAYON_NUM_THREADS", threads.to_string()).output().expect("run child");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                parse(&out.stdout)
            })
            .collect(),
    )
}

fn llama_cpp(path: &Path, threads: usize, prompt: &[u32]) -> Figures {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
    assert!(dir.join("node_modules/node-llama-cpp").is_dir(), "run `npm ci --prefix tests/reference` first");
    let input = serde_json::json!({ "prompt": prompt, "decode": DECODE_TOKENS }).to_string();
    median(
        (0..RUNS)
            .map(|_| {
                let mut child = Command::new("node")
                    .current_dir(&dir)
                    .args(["bench.mjs", path.to_str().unwrap_or_default(), &threads.to_string()])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("run node");
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
                let out = child.wait_with_output().expect("node");
                assert!(out.status.success());
                parse(&out.stdout)
            })
            .collect(),
    )
}

/// The child process: memory read bandwidth in GB/s with `threads` threads, printed. A 1 GiB
/// buffer, far beyond the caches, summed (the compiler vectorises the sum into wide loads);
/// the best of 5 passes. In a process of its own so that the buffer does not count in the peak
/// RSS llama.cpp's processes report (Linux carries a parent's peak into a child's `maxRSS`).
fn bandwidth_child(threads: usize) {
    let buffer = vec![1u64; 1 << 27];
    let per_thread = buffer.len().div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        let total: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> =
                buffer.chunks(per_thread).map(|part| scope.spawn(move || part.iter().fold(0u64, |a, b| a.wrapping_add(*b)))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).fold(0, u64::wrapping_add)
        });
        assert_eq!(total, buffer.len() as u64, "every word read once");
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!("{}", (buffer.len() * 8) as f64 / best / 1e9);
}

fn read_bandwidth(threads: usize) -> f64 {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe).arg("--bandwidth").arg(threads.to_string()).output().expect("run child");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("bandwidth")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bandwidth") {
        bandwidth_child(args[i + 1].parse().expect("thread count"));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(Path::new(&args[i + 1]));
        return;
    }
    let bandwidth = [read_bandwidth(1), read_bandwidth(2)];
    println!("memory read bandwidth: {:.1} GB/s on 1 thread, {:.1} GB/s on 2", bandwidth[0], bandwidth[1]);
    println!("prompt {PROMPT_TOKENS} tokens, decode {DECODE_TOKENS} tokens, greedy; medians of {RUNS} runs; tok/s and peak RSS (MiB)");
    println!("roofline: decode tok/s if each token read the whole file once at that bandwidth; cw % = candlewick's decode as a share of it");
    println!(
        "{:<34} {:>3} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>8} {:>5} | {:>7} {:>7} {:>7}",
        "model", "thr", "cw pre", "lc pre", "ratio", "cw dec", "lc dec", "ratio", "roofline", "cw %", "cw MiB", "lc MiB", "file"
    );
    for file in ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"] {
        let path = models_dir().join(file);
        if !path.is_file() {
            panic!("{} is missing: run scripts/fetch-models.sh", path.display());
        }
        let model = Model::open_without_weights(&path).expect("open");
        let prompt = prompt_tokens(&model);
        let file_bytes = std::fs::metadata(&path).map(|m| m.len() as f64).unwrap_or(0.0);
        for threads in [1, 2] {
            let cw = candlewick(&path, threads);
            let lc = llama_cpp(&path, threads, &prompt);
            let roofline = bandwidth[threads - 1] * 1e9 / file_bytes;
            println!(
                "{:<34} {:>3} | {:>9.1} {:>9.1} {:>6.2} | {:>9.1} {:>9.1} {:>6.2} | {:>8.1} {:>4.0}% | {:>7.0} {:>7.0} {:>7.0}",
                file,
                threads,
                cw.prefill,
                lc.prefill,
                cw.prefill / lc.prefill,
                cw.decode,
                lc.decode,
                cw.decode / lc.decode,
                roofline,
                100.0 * cw.decode / roofline,
                cw.rss_mib,
                lc.rss_mib,
                file_bytes / 1048576.0
            );
        }
    }
    println!("(llama.cpp's RSS includes the Node.js runtime, about 50 MiB)");
}
