// The demo page in a real headless Chromium (Debian's; playwright-core never downloads one):
// load SmolLM2 (on one thread per core: the page is cross-origin isolated), ask for a long
// answer, see it stream in over several frames, press Stop and see it stop. Fails, with what
// failed, on any uncaught error in the page or its worker. Then, in a Chromium with WebGPU
// (SwiftShader), the device switch: pick the GPU, see SmolLM2 load onto it (the page says which
// adapter), see the first words of an answer stream from it, switch back to the CPU and see the
// model reload there. (tests/browser/device.mjs compares the GPU's greedy tokens with the CPU's.)
//
//   node tests/browser/demo.mjs        (needs pkg/ — make pkg — and the model — make models)
//
// Writes a screenshot to ${CI_OUTPUT_DIR:-ci-output}/demo.png, relative to the repository.

import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serve } from "../../www/serve.mjs";
import { launchChromium, WEBGPU_ARGS } from "./chromium.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const outputDir = resolve(root, process.env.CI_OUTPUT_DIR || "ci-output");
const modelFile = join(process.env.CANDLEWICK_CACHE || join(homedir(), ".cache", "candlewick"), "models", "SmolLM2-135M-Instruct.Q4_1.gguf");

const PROMPT = "Write a long story about a lighthouse keeper.";
/** Fetching and compiling the WebAssembly module. */
const WORKER_TIMEOUT_MS = 30_000;
const LOAD_TIMEOUT_MS = 120_000;
/** Prefill and the first tokens; generous, the machine may be busy. */
const STREAM_TIMEOUT_MS = 60_000;
/** How many frames must show the answer longer than the frame before. */
const GROWTHS = 3;
const STOP_WITHIN_MS = 1_000;
const QUIET_FOR_MS = 1_500;

/** Loading onto SwiftShader's GPU and its first words: it is a software GPU, and slow. */
const GPU_TIMEOUT_MS = Number(process.env.DEMO_GPU_TIMEOUT_MS || 10 * 60_000);

class Failure extends Error {}

/** Uncaught errors and console errors of the page and its worker. */
const errors = [];

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

/** Waits until #status is in one of `states`; fails on "error" or after `timeoutMs`. */
async function waitForState(page, states, timeoutMs, what) {
  try {
    await page.waitForFunction(
      (wanted) => [...wanted, "error"].includes(document.querySelector("#status").dataset.state),
      states,
      { timeout: timeoutMs, polling: "raf" },
    );
  } catch {
    throw new Failure(`${what} did not happen within ${timeoutMs / 1000} s (status: ${await status(page)})`);
  }
  const state = await page.$eval("#status", (s) => s.dataset.state);
  check(states.includes(state), `${what} failed (status: ${await status(page)})`);
}

async function status(page) {
  return page.$eval("#status", (s) => `${s.dataset.state}: ${s.textContent}`).catch(() => "unknown");
}

/** The answer's length on each animation frame until it has grown `growths` times. */
function sampleGrowth(page) {
  return page.evaluate(
    ({ growths, timeoutMs }) =>
      new Promise((done) => {
        const started = performance.now();
        const lengths = [];
        const frame = () => {
          const text = document.querySelector("#messages .message.assistant:last-child .text");
          lengths.push(text.textContent.length);
          const grown = lengths.filter((n, i) => i > 0 && n > lengths[i - 1]).length;
          if (grown >= growths || performance.now() - started > timeoutMs) done({ grown, frames: lengths.length });
          else requestAnimationFrame(frame);
        };
        requestAnimationFrame(frame);
      }),
    { growths: GROWTHS, timeoutMs: STREAM_TIMEOUT_MS },
  );
}

/** The answer's length on each animation frame for `ms`. */
function sampleLengths(page, ms) {
  return page.evaluate(
    (ms) =>
      new Promise((done) => {
        const started = performance.now();
        const lengths = [];
        const frame = () => {
          lengths.push(document.querySelector("#messages .message.assistant:last-child .text").textContent.length);
          if (performance.now() - started >= ms) done(lengths);
          else requestAnimationFrame(frame);
        };
        requestAnimationFrame(frame);
      }),
    ms,
  );
}

async function run(page, url) {
  await page.goto(url);
  check(await page.evaluate(() => crossOriginIsolated), "the page is not cross-origin isolated (check serve.mjs's COOP/COEP headers)");

  // Load the default model.
  check((await page.inputValue("#model-select")).includes("SmolLM2"), "SmolLM2 is not the default model");
  try {
    await page.waitForFunction(
      () => !document.querySelector("#load").disabled || document.querySelector("#status").dataset.state === "error",
      null,
      { timeout: WORKER_TIMEOUT_MS },
    );
  } catch {
    throw new Failure(`the worker did not start within ${WORKER_TIMEOUT_MS / 1000} s (status: ${await status(page)})`);
  }
  check((await page.$eval("#status", (s) => s.dataset.state)) !== "error", `the worker failed (status: ${await status(page)})`);
  const loadStarted = Date.now();
  await page.click("#load");
  await waitForState(page, ["ready"], LOAD_TIMEOUT_MS, "loading SmolLM2");
  const loadSeconds = (Date.now() - loadStarted) / 1000;
  // The page is isolated and the model is in a worker: the package runs on one thread per core.
  const threads = Number((await page.textContent("#status")).match(/(\d+) threads?\b/)?.[1]);
  const cores = await page.evaluate(() => navigator.hardwareConcurrency);
  check(threads === cores, `the status says ${threads} threads, not one per core (${cores}): ${await status(page)}`);

  // Ask for a long answer and watch it stream.
  await page.fill("#prompt", PROMPT);
  await page.click("#send");
  const growth = await sampleGrowth(page);
  check(
    growth.grown >= GROWTHS,
    `the answer grew on ${growth.grown} frames in ${STREAM_TIMEOUT_MS / 1000} s, not ${GROWTHS} (status: ${await status(page)})`,
  );
  check(errors.length === 0, "errors while streaming");
  const state = await page.$eval("#status", (s) => s.dataset.state);
  check(state === "generating", `the answer finished before Stop could be pressed (status: ${await status(page)})`);
  check(await page.isEnabled("#stop"), "Stop is not enabled while generating");

  // Stop it: the status says so within a second, and the text stays as it is.
  const stopClicked = Date.now();
  await page.click("#stop");
  try {
    await page.waitForFunction(() => document.querySelector("#status").dataset.state === "stopped", null, {
      timeout: STOP_WITHIN_MS,
      polling: "raf",
    });
  } catch {
    throw new Failure(`the status was not "stopped" ${STOP_WITHIN_MS} ms after Stop (status: ${await status(page)})`);
  }
  const stopMs = Date.now() - stopClicked;
  const lengths = await sampleLengths(page, QUIET_FOR_MS);
  check(
    lengths.every((n) => n === lengths[0]),
    `the answer kept growing after Stop: ${lengths[0]} → ${lengths.at(-1)} characters over ${QUIET_FOR_MS} ms`,
  );
  check(await page.isEnabled("#send"), "Send is not enabled again after Stop");

  const chunks = await page.$eval("#messages .message.assistant:last-child", (m) => Number(m.dataset.chunks));
  const speed = await page.textContent("#speed");
  return { loadSeconds, threads, growth, stopMs, chunks, length: lengths[0], speed };
}

/** The device switch, in a page of a browser with WebGPU. */
async function runGpu(page, url) {
  await page.goto(url);
  await page.waitForFunction(() => !document.querySelector("#load").disabled, null, { timeout: WORKER_TIMEOUT_MS });
  await page.selectOption("#device-select", "gpu");
  const loadStarted = Date.now();
  await page.click("#load");
  await waitForState(page, ["ready"], GPU_TIMEOUT_MS, "loading SmolLM2 onto the GPU");
  const loadSeconds = (Date.now() - loadStarted) / 1000;
  const device = await page.$eval("#device", (d) => ({ device: d.dataset.device, text: d.textContent }));
  check(device.device === "gpu", `the page says the model runs on "${device.device}": ${device.text}`);
  check(/the GPU \(.+\)/.test(device.text), `the page does not name the GPU adapter: ${device.text}`);

  // The first words of an answer, from the GPU; then Stop.
  await page.fill("#prompt", "Hi");
  const asked = Date.now();
  await page.click("#send");
  try {
    await page.waitForFunction(
      () => Number(document.querySelector("#messages .message.assistant:last-child")?.dataset.chunks) >= 1 || document.querySelector("#status").dataset.state !== "generating",
      null,
      { timeout: GPU_TIMEOUT_MS, polling: 500 },
    );
  } catch {
    throw new Failure(`no words from the GPU within ${GPU_TIMEOUT_MS / 1000} s (status: ${await status(page)})`);
  }
  const firstWordSeconds = (Date.now() - asked) / 1000;
  const state = await page.$eval("#status", (s) => s.dataset.state);
  check(["generating", "done"].includes(state), `the GPU's answer failed (status: ${await status(page)})`);
  if (state === "generating") {
    await page.click("#stop");
    await waitForState(page, ["stopped", "done"], GPU_TIMEOUT_MS, "stopping the GPU's answer");
  }

  // Back to the CPU: the model loads again there.
  await page.selectOption("#device-select", "cpu");
  await waitForState(page, ["ready"], LOAD_TIMEOUT_MS, "loading SmolLM2 again on the CPU");
  const back = await page.$eval("#device", (d) => ({ device: d.dataset.device, text: d.textContent }));
  check(back.device === "cpu", `after switching back, the page says the model runs on "${back.device}": ${back.text}`);
  return { loadSeconds, firstWordSeconds, adapter: device.text };
}

async function main() {
  if (!existsSync(join(root, "pkg", "index.js"))) throw new Failure("pkg/index.js is missing: run `make pkg`");
  if (!existsSync(modelFile)) throw new Failure(`${modelFile} is missing: run \`make models\``);

  const server = await serve({ port: 0 });
  let browser;
  try {
    browser = await launchChromium({ viewport: { width: 1000, height: 900 } });
    const { context } = browser;
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("pageerror", (error) => errors.push(`uncaught: ${error.message}`));
    page.on("crash", () => errors.push("the page crashed"));
    // Console messages from the worker arrive here too.
    page.on("console", (message) => {
      if (message.type() === "error") errors.push(`console error: ${message.text()}`);
    });
    try {
      const result = await run(page, server.url);
      check(errors.length === 0, "errors in the page");
      await mkdir(outputDir, { recursive: true });
      await page.screenshot({ path: join(outputDir, "demo.png"), fullPage: true }).catch(() => {});
      await browser.close();
      browser = await launchChromium({ viewport: { width: 1000, height: 900 } }, WEBGPU_ARGS);
      const gpuPage = browser.context.pages()[0] ?? (await browser.context.newPage());
      gpuPage.on("pageerror", (error) => errors.push(`uncaught (GPU): ${error.message}`));
      gpuPage.on("console", (message) => {
        if (message.type() === "error") errors.push(`console error (GPU): ${message.text()}`);
      });
      try {
        result.gpu = await runGpu(gpuPage, server.url);
      } finally {
        await gpuPage.screenshot({ path: join(outputDir, "demo-gpu.png"), fullPage: true }).catch(() => {});
      }
      check(errors.length === 0, "errors in the page");
      return result;
    } finally {
      await mkdir(outputDir, { recursive: true });
      if (!page.isClosed()) await page.screenshot({ path: join(outputDir, "demo.png"), fullPage: true }).catch(() => {});
    }
  } finally {
    await browser?.close();
    await server.close();
  }
}

try {
  const r = await main();
  console.log(
    `demo: ok — SmolLM2 loaded in ${r.loadSeconds.toFixed(1)} s, on ${r.threads} threads; the answer grew on ${r.growth.grown} of ${r.growth.frames} frames; ` +
      `stopped ${r.stopMs} ms after Stop and stayed at ${r.length} characters (${r.chunks} chunks); speed: ${r.speed}`,
  );
  console.log(
    `demo: ok — GPU: ${r.gpu.adapter} loaded in ${r.gpu.loadSeconds.toFixed(1)} s, first words after ${r.gpu.firstWordSeconds.toFixed(1)} s; switched back to the CPU`,
  );
} catch (error) {
  console.error(`demo: FAILED — ${error instanceof Failure ? error.message : error.stack}`);
  for (const message of errors) console.error(`  ${message}`);
  process.exitCode = 1;
}
