// Model.load's `device` option in a real headless Chromium, through the npm package (pkg/):
//
// - with WebGPU (SwiftShader, the flags of chromium.mjs's WEBGPU_ARGS; the page from
//   http://127.0.0.1, a secure context): `device: "gpu"` loads SmolLM2 onto the GPU
//   (`info().device === "gpu"`, the adapter named), and a short greedy generation streams the
//   same chunks as the CPU's: the same text, token for token, and the same finish;
// - without WebGPU (no flags): `device: "auto"` falls back to the CPU and says why in
//   `info().deviceReason`, and `device: "gpu"` rejects, saying why;
// - a device lost while a stream runs (GPUDevice.destroy()) ends the stream with an error chunk
//   that says so, later generate calls refuse, and the model loads onto the GPU again;
// - everywhere: a `device` that is not "auto", "gpu" or "cpu" is a TypeError.
//
//   node tests/browser/device.mjs        (needs pkg/ — make pkg — and the model — make models)
//
// GPU_TOKENS (default 3) sets how many tokens the GPU generates: SwiftShader is slow.

import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serve } from "../../www/serve.mjs";
import { launchChromium, WEBGPU_ARGS } from "./chromium.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const models = join(process.env.CANDLEWICK_CACHE || join(homedir(), ".cache", "candlewick"), "models");
const MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PROMPT = "The capital of France is";
const TOKENS = Number(process.env.GPU_TOKENS || 3);
const TIMEOUT_MS = Number(process.env.GPU_TIMEOUT_MS || 20 * 60_000);

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

/** Runs `body(arg)` in a fresh page of `browser` that imported the single-thread package. */
async function inPage(browser, url, body, arg) {
  const page = await browser.context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(`uncaught: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && errors.push(`console error: ${m.text()}`));
  try {
    await page.goto(`${url}test/blank.html`);
    const result = await page.evaluate(
      async ({ body, arg, timeoutMs }) => {
        globalThis.candlewickThreads = 1;
        const { Model, iterate } = await import("/pkg/index.js");
        const bytes = new Uint8Array(await (await fetch(`/models/${arg.model}`)).arrayBuffer());
        // Every chunk of a generation, in order.
        const chunks = async (model, prompt, options) => {
          const out = [];
          for await (const chunk of iterate(model.generate(prompt, options))) out.push(chunk);
          return out;
        };
        const run = new Function("Model", "bytes", "chunks", "arg", `return (${body})(Model, bytes, chunks, arg);`);
        const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(`no result within ${timeoutMs / 1000} s`)), timeoutMs));
        try {
          return await Promise.race([run(Model, bytes, chunks, arg), timeout]);
        } catch (e) {
          return { failure: `${e?.name}: ${e?.message ?? e}` };
        }
      },
      { body: body.toString(), arg, timeoutMs: TIMEOUT_MS },
    );
    check(!result?.failure, result?.failure);
    check(errors.length === 0, `errors in the page: ${errors.join("; ")}`);
    return result;
  } finally {
    await page.close();
  }
}

/** A browser with WebGPU: the GPU loads the model and writes what the CPU writes. */
async function withWebGpu(url) {
  const browser = await launchChromium({}, WEBGPU_ARGS);
  try {
    return await inPage(
      browser,
      url,
      async (Model, bytes, chunks, { prompt, tokens }) => {
        let invalid = null;
        try {
          await Model.load(bytes, { device: "tpu" });
        } catch (e) {
          invalid = `${e.name}: ${e.message}`;
        }
        // The devices the package asks for, so that one can be lost on purpose below.
        const devices = [];
        const requestDevice = GPUAdapter.prototype.requestDevice;
        GPUAdapter.prototype.requestDevice = async function (...args) {
          const device = await requestDevice.apply(this, args);
          devices.push(device);
          return device;
        };
        const options = { raw: true, temperature: 0, maxTokens: tokens };
        const cpu = await Model.load(bytes, { device: "cpu" });
        const cpuInfo = cpu.info();
        const cpuChunks = await chunks(cpu, prompt, options);
        cpu.free();
        const started = performance.now();
        const gpu = await Model.load(bytes, { device: "gpu" });
        const loadMs = performance.now() - started;
        const gpuInfo = gpu.info();
        const generated = performance.now();
        const gpuChunks = await chunks(gpu, prompt, options);
        const generateMs = performance.now() - generated;
        // A device lost while a stream runs (destroyed after its first text chunk) ends the
        // stream with an error chunk; the model then refuses to generate, and loads again.
        const lostChunks = [];
        const reader = gpu.generate(prompt, { ...options, maxTokens: 64 }).getReader();
        for (let r = await reader.read(); !r.done; r = await reader.read()) {
          lostChunks.push(r.value);
          if (r.value.type === "text" && lostChunks.length === 1) devices.at(-1).destroy();
        }
        let afterLoss = null;
        try {
          await chunks(gpu, prompt, options);
        } catch (e) {
          afterLoss = `${e.name}: ${e.message}`;
        }
        gpu.free();
        const again = await Model.load(bytes, { device: "gpu" });
        const againChunks = await chunks(again, prompt, options);
        again.free();
        return { invalid, cpuInfo, gpuInfo, cpuChunks, gpuChunks, loadMs, generateMs, lostChunks, afterLoss, againChunks };
      },
      { model: MODEL, prompt: PROMPT, tokens: TOKENS },
    );
  } finally {
    await browser.close();
  }
}

/** A browser without WebGPU: "auto" falls back to the CPU with a reason, "gpu" rejects. */
async function withoutWebGpu(url) {
  const browser = await launchChromium();
  try {
    return await inPage(
      browser,
      url,
      async (Model, bytes) => {
        const hasGpu = !!navigator.gpu && !!(await navigator.gpu.requestAdapter());
        const auto = await Model.load(bytes, { device: "auto" });
        const autoInfo = auto.info();
        auto.free();
        let gpuError = null;
        try {
          (await Model.load(bytes, { device: "gpu" })).free();
        } catch (e) {
          gpuError = `${e.name}: ${e.message}`;
        }
        return { hasGpu, autoInfo, gpuError };
      },
      { model: MODEL },
    );
  } finally {
    await browser.close();
  }
}

/** The chunks without their timings (which differ from run to run). */
function comparable(chunks) {
  return chunks.map((c) => (c.type === "complete" ? { ...c, usage: { ...c.usage, timeToFirstTokenMs: 0, prefillTokensPerSecond: 0, decodeTokensPerSecond: 0 } } : c));
}

async function main() {
  check(existsSync(join(root, "pkg", "index.js")), "pkg/index.js is missing: run `make pkg`");
  check(existsSync(join(models, MODEL)), `${MODEL} is not in ${models}: run \`make models\``);
  const server = await serve({ port: 0, mounts: { "/test/": join(root, "tests/browser") }, isolate: false });
  try {
    const without = await withoutWebGpu(server.url);
    if (without.hasGpu) {
      console.log("device: this Chromium has a WebGPU adapter without the flags; the fallback checks are skipped");
    } else {
      check(without.autoInfo.device === "cpu", `device "auto" without WebGPU gave device ${without.autoInfo.device}`);
      check(/navigator\.gpu|adapter/i.test(without.autoInfo.deviceReason ?? ""), `device "auto" without WebGPU gave no reason: ${without.autoInfo.deviceReason}`);
      check(/GPU cannot run this model/.test(without.gpuError ?? ""), `device "gpu" without WebGPU did not reject with a reason: ${without.gpuError}`);
      console.log(`device: without WebGPU, "auto" runs on the CPU (${without.autoInfo.deviceReason}) and "gpu" rejects (${without.gpuError})`);
    }

    const r = await withWebGpu(server.url);
    check(/^TypeError: .*`device` must be "auto", "gpu" or "cpu"/.test(r.invalid ?? ""), `device "tpu" gave ${r.invalid}, not a TypeError`);
    check(r.cpuInfo.device === "cpu" && r.cpuInfo.deviceReason === null, `device "cpu" gave ${r.cpuInfo.device} (${r.cpuInfo.deviceReason})`);
    check(r.gpuInfo.device === "gpu", `device "gpu" gave info().device ${r.gpuInfo.device} (${r.gpuInfo.deviceReason})`);
    check(typeof r.gpuInfo.adapter === "string" && r.gpuInfo.adapter.length > 0, "info().adapter does not name the GPU");
    const [cpu, gpu] = [comparable(r.cpuChunks), comparable(r.gpuChunks)];
    check(cpu.at(-1)?.type === "complete" && cpu.at(-1).usage.completionTokens === TOKENS, `the CPU did not generate ${TOKENS} tokens: ${JSON.stringify(cpu.at(-1))}`);
    check(JSON.stringify(gpu) === JSON.stringify(cpu), `the GPU's chunks differ from the CPU's:\n  cpu ${JSON.stringify(cpu)}\n  gpu ${JSON.stringify(gpu)}`);
    const last = r.lostChunks.at(-1);
    check(last?.type === "error" && /lost/i.test(last.message), `a lost device did not end the stream with an error chunk that says so: ${JSON.stringify(r.lostChunks)}`);
    check(r.lostChunks.filter((c) => c.type === "text").length < 64, `the stream went on after the device was lost: ${JSON.stringify(r.lostChunks)}`);
    check(/lost.*load the model again/.test(r.afterLoss ?? ""), `generate after the loss did not refuse, saying to load again: ${r.afterLoss}`);
    check(JSON.stringify(comparable(r.againChunks)) === JSON.stringify(cpu), `the model loaded again after the loss writes other chunks: ${JSON.stringify(r.againChunks)}`);
    console.log(`device: a device lost mid-stream ends it with ${JSON.stringify(last)}; generate then refuses (${r.afterLoss}); loaded again, the same chunks`);
    console.log(
      `device: ok — on ${r.gpuInfo.adapter}: SmolLM2 loaded onto the GPU in ${(r.loadMs / 1000).toFixed(1)} s; ${TOKENS} greedy tokens ` +
        `in ${(r.generateMs / 1000).toFixed(1)} s, the same chunks as the CPU's (${JSON.stringify(r.cpuChunks.filter((c) => c.type === "text").map((c) => c.text).join(""))})`,
    );
  } finally {
    await server.close();
  }
}

main().catch((e) => {
  console.error(`device: FAILED — ${e instanceof Failure ? e.message : e.stack}`);
  process.exit(1);
});
