// The page half of the browser benchmark: runs one engine on one model and times its token
// stream as the page sees it. bench.mjs calls window.bench.run(...) once per (engine, model),
// each time in a fresh page.
//
// Both engines generate in a Web Worker and the page stamps each chunk when it arrives, so the
// two are timed the same way: wllama always runs llama.cpp in its own worker, and candlewick runs
// here in candlewick-worker.mjs, which forwards every chunk to the page as it comes.
//
// From the stamps, per run:
//   prefill tok/s = prompt tokens / (first text chunk − request)
//   decode tok/s  = (completion tokens − 1) / (final chunk − first text chunk)
// The first text chunk follows the first sampled token, so the decode span holds the
// completion tokens − 1 forward passes that came after it. Each engine's own figures are kept
// beside these, under `reported`.

const logElement = document.getElementById("log");
function log(line) {
  logElement.textContent += `${line}\n`;
  console.log(`[bench] ${line}`);
}

/** Page-side figures of one generation. */
function figures({ requested, first, last, promptTokens, completionTokens }) {
  const seconds = (ms) => Math.max(ms, 1e-6) / 1000;
  return {
    prefillTokensPerSecond: first === undefined ? 0 : promptTokens / seconds(first - requested),
    decodeTokensPerSecond: first === undefined || completionTokens < 2 ? 0 : (completionTokens - 1) / seconds(last - first),
  };
}

// ---- candlewick (pkg/index.js, in candlewick-worker.mjs) ----

/** A request/response channel to the candlewick worker; `onChunk` sees each chunk on arrival. */
function workerChannel(worker) {
  let next = 0;
  const pending = new Map();
  worker.onmessage = ({ data }) => {
    const call = pending.get(data.id);
    if (!call) return;
    if (data.kind === "chunk") return call.onChunk(data.chunk, performance.now());
    if (data.kind === "log") return log(data.line);
    pending.delete(data.id);
    if (data.kind === "error") call.reject(new Error(`candlewick worker: ${data.message}`));
    else call.resolve(data.value);
  };
  worker.onerror = (event) => {
    for (const call of pending.values()) call.reject(new Error(`candlewick worker: ${event.message}`));
    pending.clear();
  };
  return (request, onChunk = () => {}) =>
    new Promise((resolve, reject) => {
      const id = next++;
      pending.set(id, { resolve, reject, onChunk });
      worker.postMessage({ id, ...request });
    });
}

/** candlewick on `device` ("cpu" on `threads` threads, or "gpu": its single-thread build with WebGPU). */
async function candlewick({ modelUrl, prompt, maxTokens, runs, warmupTokens, threads, device = "cpu" }) {
  if (device === "gpu") threads = 1;
  const worker = new Worker(new URL(`./candlewick-worker.mjs?threads=${threads}`, import.meta.url), { type: "module" });
  const call = workerChannel(worker);
  try {
    log(`candlewick: loading ${modelUrl} in a worker, device ${device}, ${threads} threads asked for`);
    const loadStarted = performance.now();
    const info = await call({ op: "load", url: modelUrl, device });
    const running = info.threads;
    const loadMs = performance.now() - loadStarted;
    log(`candlewick: loaded ${modelUrl} in ${loadMs.toFixed(0)} ms, running on ${info.device === "gpu" ? info.adapter : `${running} threads`}`);
    if (info.device !== device) throw new Error(`candlewick runs on the ${info.device}, not the ${device}: ${info.deviceReason}`);
    if (running !== threads) throw new Error(`candlewick runs on ${running} threads, not ${threads}`);

    const generate = async (tokens) => {
      const stamps = { requested: performance.now(), first: undefined, last: undefined };
      let complete, failure;
      await call({ op: "generate", text: prompt, maxTokens: tokens }, (chunk, at) => {
        if (chunk.type === "text" && chunk.text && stamps.first === undefined) stamps.first = at;
        if (chunk.type === "complete") {
          stamps.last = at;
          complete = chunk;
        }
        if (chunk.type === "error") failure = chunk.message;
      });
      if (failure) throw new Error(`candlewick: ${failure}`);
      if (!complete) throw new Error("candlewick: the stream ended without a complete chunk");
      const usage = complete.usage ?? {};
      return {
        ...figures({ ...stamps, promptTokens: usage.promptTokens, completionTokens: usage.completionTokens }),
        promptTokens: usage.promptTokens,
        completionTokens: usage.completionTokens,
        finishReason: complete.finishReason,
        text: complete.text ?? null,
        reported: { prefillTokensPerSecond: usage.prefillTokensPerSecond, decodeTokensPerSecond: usage.decodeTokensPerSecond },
      };
    };

    if (warmupTokens > 0) await generate(warmupTokens);
    const results = [];
    for (let i = 0; i < runs; i++) {
      const r = await generate(maxTokens);
      log(`candlewick run ${i + 1}: decode ${r.decodeTokensPerSecond.toFixed(2)} tok/s, ${r.completionTokens} tokens`);
      results.push(r);
    }
    return { engine: device === "gpu" ? "candlewick-gpu" : "candlewick", loadMs, threads: running, adapter: info.adapter, runs: results };
  } finally {
    await call({ op: "free" }).catch(() => {});
    worker.terminate();
  }
}

// ---- wllama (llama.cpp in wasm, its own worker) ----

const WLLAMA = "/vendor/wllama/esm/";

async function wllama({ modelUrl, prompt, maxTokens, runs, warmupTokens, threads }) {
  const { Wllama, LoggerWithoutDebug } = await import(`${WLLAMA}index.js`);
  // 3.13 ships one wasm file, built with pthreads; with n_threads 1 it starts none (see
  // Wllama.loadModel), with more it needs the page cross-origin isolated, as this one is.
  const engine = new Wllama({ default: `${WLLAMA}wasm/wllama.wasm` }, { logger: LoggerWithoutDebug, suppressNativeLog: true });
  try {
    const loadStarted = performance.now();
    // n_gpu_layers 0: CPU only, as candlewick is (the browser runs with --disable-gpu anyway).
    await engine.loadModelFromUrl(modelUrl, { n_threads: threads, n_gpu_layers: 0, useCache: false });
    const loadMs = performance.now() - loadStarted;
    log(`wllama ${Wllama.getLibllamaVersion()}: loaded ${modelUrl} in ${loadMs.toFixed(0)} ms, ` +
      `multithread ${engine.isMultithread()}, threads ${engine.getNumThreads()}`);
    if (engine.getNumThreads() !== threads) throw new Error(`wllama runs on ${engine.getNumThreads()} threads, not ${threads}`);

    const generate = async (tokens) => {
      const stamps = { requested: performance.now(), first: undefined, last: undefined };
      // cache_prompt false: every run processes the whole prompt, as candlewick does.
      const stream = await engine.createCompletion({
        prompt, max_tokens: tokens, temperature: 0, stream: true, cache_prompt: false,
      });
      let text = "", finishReason = null, usage = null, timings = null;
      for await (const chunk of stream) {
        const at = performance.now();
        const piece = chunk.choices?.[0]?.text ?? "";
        if (piece && stamps.first === undefined) stamps.first = at;
        stamps.last = at;
        text += piece;
        finishReason = chunk.choices?.[0]?.finish_reason ?? finishReason;
        usage = chunk.usage ?? usage;
        timings = chunk.timings ?? timings;
      }
      const promptTokens = usage?.prompt_tokens ?? timings?.prompt_n;
      const completionTokens = usage?.completion_tokens ?? timings?.predicted_n;
      return {
        ...figures({ ...stamps, promptTokens, completionTokens }),
        promptTokens,
        completionTokens,
        finishReason,
        text,
        // llama.cpp's own timings (llama-server's): predicted_per_second is generated tokens over
        // the time after the prompt, prompt_per_second prompt tokens over the prompt's time.
        reported: { prefillTokensPerSecond: timings?.prompt_per_second, decodeTokensPerSecond: timings?.predicted_per_second },
      };
    };

    if (warmupTokens > 0) await generate(warmupTokens);
    const results = [];
    for (let i = 0; i < runs; i++) {
      const r = await generate(maxTokens);
      log(`wllama run ${i + 1}: decode ${r.decodeTokensPerSecond.toFixed(2)} tok/s, ${r.completionTokens} tokens`);
      results.push(r);
    }
    return {
      engine: "wllama",
      version: Wllama.getLibllamaVersion(),
      loadMs,
      multithread: engine.isMultithread(),
      threads: engine.getNumThreads(),
      runs: results,
    };
  } finally {
    await engine.exit().catch(() => {});
  }
}

window.bench = {
  crossOriginIsolated: self.crossOriginIsolated,
  /** Runs `engine` ("candlewick" | "candlewick-gpu" | "wllama") on one model; see bench.mjs for the options. */
  run: (engine, options) => ({ candlewick, "candlewick-gpu": (o) => candlewick({ ...o, device: "gpu" }), wllama })[engine](options),
};
window.benchReady = true;
