#!/usr/bin/env node
// Decode (and prefill) speed on 1 and 2 threads: candlewick's wasm package in headless Chromium
// (its single-thread build on one thread, its threaded build on more), beside wllama 3.13.0
// (llama.cpp compiled to wasm) in the same browser and beside candlewick's native CLI, on the
// same GGUF files, the same raw prompt text, greedy, 64 generated tokens.
//
//   node benches/browser/bench.mjs [--runs 3] [--max-tokens 64] [--models a.gguf,b.gguf]
//                                  [--engines native,candlewick,wllama,gpu] [--threads 1,2]
//                                  [--timeout-minutes 30] [--gpu-max-tokens 64]
//
// The GPU column (engine `gpu`): candlewick's package with `device: "gpu"` (WebGPU), in a
// Chromium of its own started with BENCH_GPU_ARGS (default: WebGPU on SwiftShader, Chromium's
// software Vulkan, the only WebGPU this machine has; it proves the path, not a speed). On a
// machine with a real GPU: BENCH_GPU_ARGS="--enable-unsafe-webgpu" (Linux; add
// --enable-features=Vulkan if Chromium picks no adapter) uses it, the GPU left on. The adapter's
// name is printed beside the figures. One row per model (the GPU does not depend on threads).
//
// Needs pkg/ with pkg/threads/ (make pkg), target/release/candlewick (under $CARGO_TARGET_DIR
// if set), /usr/bin/chromium and
// `npm ci --prefix tests/browser` (playwright-core and @wllama/wllama; no browser is downloaded).
// Models are read from ~/.cache/candlewick/models (or $CANDLEWICK_CACHE/models), served under
// /models/ by www/serve.mjs, which this script starts in-process.
//
// Each engine loads the model once, makes one short unmeasured warm-up generation (so wasm
// tier-up and first-touch page faults fall outside the figures), then RUNS measured ones; a figure
// is the median of those. Native runs are separate processes, as a user would start them.
// How the browser figures are taken is written at the top of bench-page.mjs.
// BENCH_VERBOSE=1 shows every console message of the page and its workers.
// BENCH_JSON=path also writes every run's raw figures and texts there.

import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { homedir, loadavg } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { CHROMIUM, launchChromium, WEBGPU_ARGS } from "../../tests/browser/chromium.mjs";

const root = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const cli = join(process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(root, "target"), "release/candlewick");
const modelsDir = join(process.env.CANDLEWICK_CACHE || join(homedir(), ".cache/candlewick"), "models");
const wllamaDir = join(root, "tests/browser/node_modules/@wllama/wllama");

// Plain English prose, no chat template: 110 tokens for SmolLM2, 111 for Qwen2.5 (no BOS is
// added for either: both files say add_bos_token = false).
const PROMPT =
  "The old lighthouse keeper woke before dawn, as he had every morning for thirty years. He " +
  "climbed the spiral stairs, counting each of the one hundred and twelve steps, and checked the " +
  "great lens for salt and dust. Outside, the fog rolled in from the sea like a grey blanket, " +
  "hiding the rocks below. He remembered the winter when the lamp had failed and a fishing boat " +
  "had nearly run aground. Since then he had never missed a single night. Today, however, a " +
  "letter from the harbour office lay on his kitchen table, and it said";

const WARMUP_TOKENS = 8;

function options(argv) {
  const opts = {
    runs: 3,
    maxTokens: 64,
    models: ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"],
    engines: ["native", "candlewick", "wllama", "gpu"],
    threads: [1, 2],
    timeoutMinutes: 30,
    gpuMaxTokens: undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
      return argv[++i];
    };
    switch (argv[i]) {
      case "--runs": opts.runs = Number(value()); break;
      case "--max-tokens": opts.maxTokens = Number(value()); break;
      case "--models": opts.models = value().split(","); break;
      case "--engines": opts.engines = value().split(","); break;
      case "--threads": opts.threads = value().split(",").map(Number); break;
      case "--timeout-minutes": opts.timeoutMinutes = Number(value()); break;
      case "--gpu-max-tokens": opts.gpuMaxTokens = Number(value()); break;
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (!(opts.runs >= 1) || !(opts.maxTokens >= 2)) throw new Error("--runs ≥ 1 and --max-tokens ≥ 2");
  if (!opts.threads.every((n) => Number.isInteger(n) && n >= 1)) throw new Error("--threads takes whole numbers ≥ 1");
  return opts;
}

/**
 * The share of the last 10 s in which some runnable thread waited for a CPU (Linux's pressure
 * stall information), in %: other work on the machine slows two threads far more than one.
 */
function cpuPressure() {
  try {
    return Number(readFileSync("/proc/pressure/cpu", "utf8").match(/^some avg10=([\d.]+)/)?.[1]);
  } catch {
    return undefined;
  }
}

function median(values) {
  const v = values.filter((x) => typeof x === "number" && Number.isFinite(x)).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : undefined;
}

// ---- native: one process per run, figures from the CLI's closing stderr line ----

function runCli(args) {
  return new Promise((done, fail) => {
    const child = spawn(cli, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "", stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", fail);
    child.on("close", (code) => (code === 0 ? done({ stdout, stderr }) : fail(new Error(`candlewick exited ${code}: ${stderr}`))));
  });
}

// [110 prompt tokens, 64 generated, finished: length; first token after 95 ms; prefill 1157.9 tok/s, decode 93.2 tok/s]
const USAGE_LINE =
  /\[(\d+) prompt tokens, (\d+) generated, finished: ([^;]+); first token after [\d.]+ ms; prefill ([\d.]+) tok\/s, decode ([\d.]+) tok\/s\]/;

async function native(model, threads, { runs, maxTokens }) {
  const args = ["generate", "--model", join(modelsDir, model), "--prompt", PROMPT, "--raw",
    "--max-tokens", String(maxTokens), "--temperature", "0", "--threads", String(threads)];
  const results = [];
  for (let i = 0; i < runs; i++) {
    const { stdout, stderr } = await runCli(args);
    const m = stderr.match(USAGE_LINE);
    if (!m) throw new Error(`no usage line in the CLI's stderr:\n${stderr}`);
    results.push({
      promptTokens: Number(m[1]),
      completionTokens: Number(m[2]),
      finishReason: m[3].trim(),
      prefillTokensPerSecond: Number(m[4]),
      decodeTokensPerSecond: Number(m[5]),
      text: stdout.replace(/\n$/, ""), // the CLI ends the answer with one newline
    });
    console.error(`native ${model} ${threads} threads run ${i + 1}: decode ${m[5]} tok/s, ${m[2]} tokens`);
  }
  return { engine: "native", threads, runs: results };
}

// ---- browser ----

async function browserRun(context, baseUrl, engine, model, threads, { runs, maxTokens, timeoutMinutes }) {
  const page = await context.newPage();
  let watchdog;
  page.on("console", (message) => {
    const text = message.text();
    if (text.startsWith("[bench] ") || message.type() === "error" || process.env.BENCH_VERBOSE) {
      console.error(`  page: ${text.replace(/^\[bench\] /, "")}`);
    }
  });
  page.on("pageerror", (error) => console.error(`  page error: ${error.message}`));
  page.on("response", (response) => {
    if (response.status() >= 400) console.error(`  page: ${response.status()} for ${response.url()}`);
  });
  try {
    await page.goto(new URL("bench/bench.html", baseUrl).href);
    await page.waitForFunction(() => window.benchReady === true, null, { timeout: 60_000 });
    if (!(await page.evaluate(() => window.bench.crossOriginIsolated))) {
      console.error("  warning: the page is not cross-origin isolated (coarse timers)");
    }
    // A hung engine must not hang the benchmark: closing the page fails the evaluate below.
    watchdog = setTimeout(() => {
      console.error(`  ${engine} on ${model}: no result after ${timeoutMinutes} min, giving up`);
      page.close().catch(() => {});
    }, timeoutMinutes * 60_000);
    return await page.evaluate(
      ([engine, opts]) => window.bench.run(engine, opts),
      [engine, { modelUrl: `/models/${model}`, prompt: PROMPT, maxTokens, runs, warmupTokens: WARMUP_TOKENS, threads }],
    );
  } finally {
    clearTimeout(watchdog);
    await page.close();
  }
}

// ---- report ----

const fmt = (x, digits = 1) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "–");

function summary(result) {
  if (!result || result.error) return undefined;
  const pick = (get) => median(result.runs.map(get));
  return {
    decode: pick((r) => r.decodeTokensPerSecond),
    prefill: pick((r) => r.prefillTokensPerSecond),
    reportedDecode: pick((r) => r.reported?.decodeTokensPerSecond),
    reportedPrefill: pick((r) => r.reported?.prefillTokensPerSecond),
    cpuPressure: result.cpuPressure,
    promptTokens: [...new Set(result.runs.map((r) => r.promptTokens))].join("/"),
    completionTokens: [...new Set(result.runs.map((r) => r.completionTokens))].join("/"),
    finish: [...new Set(result.runs.map((r) => r.finishReason))].join("/"),
    text: result.runs[0]?.text,
    adapter: result.adapter,
  };
}

/** How far two greedy answers agree: "same" or the character where they part. */
function agreement(a, b) {
  if (typeof a !== "string" || typeof b !== "string") return "–";
  if (a === b) return "same";
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return `differs at char ${i}`;
}

function report(rows, opts) {
  const ratio = (a, b) => (a && b ? `${(a / b).toFixed(2)}×` : "–");
  const table = [
    ["model", "threads", "prompt tok n/cw/wl", "generated n/cw/wl",
      "native decode", "candlewick wasm decode", "wllama decode", "cw/wllama decode",
      "native prefill", "cw wasm prefill", "wllama prefill", "cw/wllama prefill",
      "cw GPU decode", "cw GPU prefill"],
  ];
  for (const { model, threads, native: n, candlewick: c, wllama: w, gpu: g } of rows) {
    table.push([
      model,
      threads,
      [n?.promptTokens, c?.promptTokens, w?.promptTokens].map((x) => x ?? "–").join(" / "),
      [n?.completionTokens, c?.completionTokens, w?.completionTokens].map((x) => x ?? "–").join(" / "),
      fmt(n?.decode), fmt(c?.decode), fmt(w?.decode), ratio(c?.decode, w?.decode),
      fmt(n?.prefill), fmt(c?.prefill), fmt(w?.prefill), ratio(c?.prefill, w?.prefill),
      fmt(g?.decode), fmt(g?.prefill),
    ]);
  }
  const widths = table[0].map((_, i) => Math.max(...table.map((row) => String(row[i]).length)));
  const line = (row) => `| ${row.map((cell, i) => String(cell).padEnd(widths[i])).join(" | ")} |`;
  console.log(line(table[0]));
  console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`);
  for (const row of table.slice(1)) console.log(line(row));

  console.log(`
tok/s, median of ${opts.runs} runs, greedy, ${opts.maxTokens} tokens asked for, raw prompt (no template).
Browser columns are timed in the page from chunk arrival (see bench-page.mjs): decode = (completion
tokens − 1) / (first text chunk → final chunk); prefill = prompt tokens / (request → first text chunk).
candlewick wasm runs its single-thread build on 1 thread, its threaded build on more.
Native columns are the CLI's own usage line (--threads N). n / cw / wl: native, candlewick wasm, wllama.
cw GPU: candlewick's package with device "gpu" (WebGPU; single-thread build), in the first row of
each model, ${opts.gpuMaxTokens ?? opts.maxTokens} tokens asked for.`);
  for (const { model, gpu: g } of rows.filter((r) => r.gpu)) {
    console.log(`GPU adapter for ${model}: ${g.adapter}; text vs native: ${agreement(g.text, rows.find((r) => r.model === model && r.native)?.native?.text)}`);
  }

  const fewest = Math.min(...opts.threads);
  console.log(`\nSpeed-up over ${fewest} thread(s), decode / prefill:`);
  for (const row of rows.filter((r) => r.threads !== fewest)) {
    const base = rows.find((r) => r.model === row.model && r.threads === fewest);
    const gain = (engine) => `${ratio(row[engine]?.decode, base?.[engine]?.decode)} / ${ratio(row[engine]?.prefill, base?.[engine]?.prefill)}`;
    console.log(`  ${row.model}, ${row.threads} threads: native ${gain("native")}, candlewick wasm ${gain("candlewick")}, wllama ${gain("wllama")}; ` +
      `candlewick's text against ${fewest} thread(s): ${agreement(row.candlewick?.text, base?.candlewick?.text)}`);
  }

  console.log("\nEach engine's own figures (median), and agreement of the greedy text with native:");
  for (const { model, threads, candlewick: c, wllama: w, native: n } of rows) {
    const stalled = (r) => (r?.cpuPressure ? `; CPU stalled ${r.cpuPressure.map((x) => fmt(x, 0)).join(" → ")} %` : "");
    console.log(`  ${model}, ${threads} threads`);
    if (c) console.log(`    candlewick usage:   decode ${fmt(c.reportedDecode)}, prefill ${fmt(c.reportedPrefill)} tok/s; finish ${c.finish}; text vs native: ${agreement(c.text, n?.text)}${stalled(c)}`);
    if (w) console.log(`    wllama timings:     decode ${fmt(w.reportedDecode)} (predicted_per_second), prefill ${fmt(w.reportedPrefill)} (prompt_per_second) tok/s; finish ${w.finish}; text vs native: ${agreement(w.text, n?.text)}${stalled(w)}`);
    if (n) console.log(`    native:             finish ${n.finish}`);
  }
}

// ---- main ----

async function main() {
  const opts = options(process.argv.slice(2));
  const wantBrowser = opts.engines.some((e) => e !== "native");
  if (!(opts.gpuMaxTokens === undefined || opts.gpuMaxTokens >= 2)) throw new Error("--gpu-max-tokens ≥ 2");
  const missing = [
    ...opts.models.map((m) => join(modelsDir, m)),
    ...(opts.engines.includes("native") ? [cli] : []),
    ...(opts.engines.includes("candlewick") ? [join(root, "pkg/index.js"), join(root, "pkg/threads/candlewick_bg.wasm")] : []),
    ...(opts.engines.includes("gpu") ? [join(root, "pkg/index.js")] : []),
    ...(wantBrowser ? [CHROMIUM, wllamaDir, join(root, "www/serve.mjs")] : []),
  ].filter((p) => !existsSync(p));
  if (missing.length) throw new Error(`missing: ${missing.join(", ")}`);
  console.error(`load average before the runs: ${loadavg().map((x) => x.toFixed(2)).join(" ")}; CPU stalled ${fmt(cpuPressure(), 0)} % of the last 10 s`);

  // raw[model][threads][engine]: one engine's runs
  const raw = Object.fromEntries(opts.models.map((m) => [m, Object.fromEntries(opts.threads.map((n) => [n, {}]))]));
  if (opts.engines.includes("native")) {
    for (const model of opts.models) {
      for (const threads of opts.threads) raw[model][threads].native = await native(model, threads, opts);
    }
  }

  if (wantBrowser) {
    const { serve } = await import(join(root, "www/serve.mjs"));
    const server = await serve({
      port: 0,
      mounts: { "/vendor/wllama/": wllamaDir, "/bench/": join(root, "benches/browser") },
    });
    let browser;
    try {
      browser = await launchChromium();
      for (const model of opts.models) {
        for (const threads of opts.threads) {
          for (const engine of ["candlewick", "wllama"].filter((e) => opts.engines.includes(e))) {
            console.error(`${engine} ${model}, ${threads} threads:`);
            try {
              const before = cpuPressure();
              raw[model][threads][engine] = await browserRun(browser.context, server.url, engine, model, threads, opts);
              raw[model][threads][engine].cpuPressure = [before, cpuPressure()];
            } catch (error) {
              console.error(`  ${engine} failed on ${model}: ${error.message}`);
              raw[model][threads][engine] = { error: error.message };
            }
          }
        }
      }
      // The GPU column: one run per model, in a browser with WebGPU.
      if (opts.engines.includes("gpu")) {
        await browser.close();
        browser = undefined;
        const gpuArgs = process.env.BENCH_GPU_ARGS?.split(/\s+/).filter(Boolean) ?? WEBGPU_ARGS;
        const hardwareGpu = !gpuArgs.some((a) => a.includes("swiftshader"));
        browser = await launchChromium({}, gpuArgs, { hardwareGpu });
        const threads = Math.min(...opts.threads);
        for (const model of opts.models) {
          console.error(`candlewick-gpu ${model} (${gpuArgs.join(" ")}):`);
          try {
            const gpuOpts = { ...opts, maxTokens: opts.gpuMaxTokens ?? opts.maxTokens };
            raw[model][threads].gpu = await browserRun(browser.context, server.url, "candlewick-gpu", model, 1, gpuOpts);
          } catch (error) {
            console.error(`  candlewick-gpu failed on ${model}: ${error.message}`);
            raw[model][threads].gpu = { error: error.message };
          }
        }
      }
    } finally {
      await browser?.close();
      await server.close();
    }
  }

  const rows = opts.models.flatMap((model) =>
    opts.threads.map((threads) => ({
      model,
      threads,
      native: summary(raw[model][threads].native),
      candlewick: summary(raw[model][threads].candlewick),
      wllama: summary(raw[model][threads].wllama),
      gpu: summary(raw[model][threads].gpu),
    })),
  );
  console.log();
  report(rows, opts);
  for (const model of opts.models) {
    for (const threads of opts.threads) {
      for (const [engine, result] of Object.entries(raw[model][threads])) {
        if (result.error) console.log(`\n${engine} on ${model}, ${threads} threads, failed: ${result.error}`);
      }
    }
  }
  if (process.env.BENCH_JSON) {
    const { writeFile } = await import("node:fs/promises");
    await writeFile(process.env.BENCH_JSON, JSON.stringify(raw, null, 2));
  }
}

main().catch((error) => {
  console.error(`bench: ${error.message}`);
  process.exit(1);
});
