// The package's two builds in a real headless Chromium: in a worker of a cross-origin isolated
// page it runs on a pool of threads, and writes, greedy, exactly what the single-thread build
// writes; where threads cannot run (a page that is not isolated, a page's main thread, or one
// thread asked for) it runs on one.
//
//   node tests/browser/threads.mjs      (needs pkg/ with pkg/threads/ — make pkg — and SmolLM2)

import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serve } from "../../www/serve.mjs";
import { launchChromium } from "./chromium.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const modelName = "SmolLM2-135M-Instruct.Q4_1.gguf";
const modelFile = join(process.env.CANDLEWICK_CACHE || join(homedir(), ".cache", "candlewick"), "models", modelName);

// Raw text, one long enough that its prefill splits the activation rows over tasks, and a chat.
const PROMPTS = [
  "The capital of France is",
  "The old lighthouse keeper woke before dawn, as he had every morning for thirty years. He climbed " +
    "the spiral stairs, counting each of the one hundred and twelve steps, and checked the great lens " +
    "for salt and dust. Outside, the fog rolled in from the sea",
  [{ role: "user", content: "Name three rivers in Europe." }],
];
const MAX_TOKENS = 32;
const RUN_TIMEOUT_MS = 180_000;

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

/** The run of threads-run.mjs in a new module worker of `page` (or in the page itself). */
async function run(page, where, threads) {
  const request = { threads, model: `/models/${modelName}`, prompts: PROMPTS, maxTokens: MAX_TOKENS };
  const result = await page.evaluate(
    ([where, request, timeoutMs]) =>
      new Promise((done) => {
        if (where === "page") return import("/tests/threads-run.mjs").then((m) => m.run(request)).then(done);
        const worker = new Worker("/tests/threads-run.mjs", { type: "module" });
        const timer = setTimeout(() => done({ error: `no answer within ${timeoutMs / 1000} s` }), timeoutMs);
        worker.onmessage = ({ data }) => {
          clearTimeout(timer);
          worker.terminate();
          done(data);
        };
        worker.onerror = (event) => done({ error: `the worker failed: ${event.message || "it did not load"}` });
        worker.postMessage(request);
      }),
    [where, request, RUN_TIMEOUT_MS],
  );
  if (result.error) throw new Failure(`${where}, candlewickThreads ${threads ?? "unset"}: ${result.error}`);
  return result;
}

// wasm-bindgen-rayon 1.3.0's pool workers initialise the module with the (module, memory)
// arguments wasm-bindgen 0.2.130 warns about: the one warning that is expected.
const EXPECTED_WARNING = "using deprecated parameters for the initialization function; pass a single object instead";

/** A fresh page of `server` (each package import needs a realm of its own). */
async function openPage(context, server, errors) {
  const page = await context.newPage();
  page.on("pageerror", (error) => errors.push(`uncaught: ${error.message}`));
  page.on("console", (message) => {
    const warning = message.type() === "warning" && message.text() !== EXPECTED_WARNING;
    if (message.type() === "error" || warning) errors.push(`console ${message.type()}: ${message.text()}`);
  });
  await page.goto(new URL("tests/blank.html", server.url).href);
  return page;
}

function speed(result) {
  const median = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const prefill = median(result.usage.map((u) => u.prefillTokensPerSecond));
  const decode = median(result.usage.map((u) => u.decodeTokensPerSecond));
  return `prefill ${prefill.toFixed(0)}, decode ${decode.toFixed(1)} tok/s`;
}

async function main() {
  for (const file of ["pkg/index.js", "pkg/threads/candlewick_bg.wasm"]) {
    if (!existsSync(join(root, file))) throw new Failure(`${file} is missing: run \`make pkg\``);
  }
  if (!existsSync(modelFile)) throw new Failure(`${modelFile} is missing: run \`make models\``);

  const mounts = { "/tests/": join(root, "tests/browser") };
  const isolated = await serve({ port: 0, mounts });
  const plain = await serve({ port: 0, mounts, isolate: false });
  const errors = [];
  const lines = [];
  let browser;
  try {
    browser = await launchChromium();
    const { context } = browser;
    const page = await openPage(context, isolated, errors);
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    check(await page.evaluate(() => crossOriginIsolated), "the page is not cross-origin isolated (check serve.mjs)");

    const single = await run(page, "worker", 1);
    check(single.threads === 1, `candlewickThreads = 1 ran on ${single.threads} threads`);
    lines.push(`isolated worker, 1 thread asked: 1 thread, ${speed(single)}`);
    const same = (result, what) => {
      result.texts.forEach((text, i) =>
        check(text === single.texts[i], `${what}: prompt ${i + 1} gave ${JSON.stringify(text)}, one thread ${JSON.stringify(single.texts[i])}`),
      );
    };

    // Two threads even on a one-core machine, so the threaded build is always tested.
    const two = await run(await openPage(context, isolated, errors), "worker", 2);
    check(two.threads === 2, `candlewickThreads = 2 in an isolated worker ran on ${two.threads} threads`);
    same(two, "2 threads");
    lines.push(`isolated worker, 2 threads asked: 2 threads, same text, ${speed(two)}`);

    const auto = await run(await openPage(context, isolated, errors), "worker", undefined);
    check(auto.threads === cores, `an isolated worker ran on ${auto.threads} threads by default, not one per core (${cores})`);
    same(auto, "one thread per core");
    lines.push(`isolated worker, default: ${auto.threads} threads (${cores} cores), same text`);

    const onPage = await run(await openPage(context, isolated, errors), "page", 2);
    check(onPage.threads === 1, `the page's main thread ran on ${onPage.threads} threads`);
    same(onPage, "the page's main thread");
    lines.push("isolated page's main thread, 2 threads asked: 1 thread, same text");

    const open = await openPage(context, plain, errors);
    check(!(await open.evaluate(() => crossOriginIsolated)), "the page without COOP/COEP is cross-origin isolated");
    const fallback = await run(open, "worker", undefined);
    check(fallback.threads === 1 && !fallback.isolated, `a worker of a page that is not isolated ran on ${fallback.threads} threads`);
    same(fallback, "not isolated");
    lines.push("worker of a page that is not isolated: 1 thread, same text");

    check(errors.length === 0, "errors or warnings in the pages");
    return { lines, texts: single.texts };
  } finally {
    await browser?.close();
    await isolated.close();
    await plain.close();
    if (errors.length) for (const message of errors) console.error(`  ${message}`);
  }
}

try {
  const { lines, texts } = await main();
  console.log(`threads: ok — ${lines.length} runs of ${PROMPTS.length} greedy prompts, ${MAX_TOKENS} tokens each, all alike:`);
  for (const line of lines) console.log(`  ${line}`);
  console.log(`  first answer: ${JSON.stringify(texts[0])}`);
} catch (error) {
  console.error(`threads: FAILED — ${error instanceof Failure ? error.message : error.stack}`);
  process.exitCode = 1;
}
