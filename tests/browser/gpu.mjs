// The GPU's WGSL products against the CPU kernels, and its other operations against the CPU
// backend's, in a real headless Chromium on WebGPU (SwiftShader, Chromium's software Vulkan):
// src/gpu/check.rs, which states and justifies the tolerances, run in the page through the `webgpu` build's `gpuKernelCheck()`. Fails, saying
// so, when the page has no WebGPU adapter: it never skips.
//
//   make test-gpu                       (builds the `webgpu` package, then runs this)
//   node tests/browser/gpu.mjs [DIR]    (DIR: that package, by default
//                                        $CARGO_TARGET_DIR/pkg-webgpu or target/pkg-webgpu)

import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serve } from "../../www/serve.mjs";
import { launchChromium, WEBGPU_ARGS } from "./chromium.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const pkg = resolve(process.argv[2] || join(process.env.CARGO_TARGET_DIR || join(root, "target"), "pkg-webgpu"));
/** SwiftShader is slow; the products are small. */
const RUN_TIMEOUT_MS = 120_000;

class Failure extends Error {}

async function main() {
  if (!existsSync(join(pkg, "candlewick.js"))) {
    throw new Failure(`no webgpu package in ${pkg}: run \`make test-gpu\` (or build it with wasm-pack ... -- --features webgpu)`);
  }
  const server = await serve({ port: 0, mounts: { "/test/": join(root, "tests/browser"), "/gpu-pkg/": pkg }, isolate: false });
  const browser = await launchChromium({}, WEBGPU_ARGS);
  try {
    const page = await browser.context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    // WebGPU reports a shader that does not compile on the console.
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    // http://127.0.0.1 is a secure context; WebGPU needs one.
    await page.goto(`${server.url}test/blank.html`);
    const started = Date.now();
    const result = await page.evaluate(async (timeoutMs) => {
      if (!navigator.gpu) return { error: "navigator.gpu is undefined: this Chromium has no WebGPU (flags, or not a secure context)" };
      const timeout = new Promise((resolve) => setTimeout(() => resolve({ error: `no result within ${timeoutMs / 1000} s` }), timeoutMs));
      const run = (async () => {
        // wgpu does not see the browser adapter's name: ask for it here.
        const adapter = await navigator.gpu.requestAdapter();
        if (!adapter) return { error: "navigator.gpu.requestAdapter() gave no adapter" };
        const { vendor, architecture } = adapter.info ?? {};
        const wasm = await import("/gpu-pkg/candlewick.js");
        await wasm.default();
        const result = await wasm.gpuKernelCheck();
        return { ...result, adapter: `${vendor} ${architecture} (WebGPU)` };
      })().catch((e) => ({ error: String(e?.message ?? e) }));
      return Promise.race([run, timeout]);
    }, RUN_TIMEOUT_MS);
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    if (result.error) throw new Failure(`WebGPU kernel check did not run: ${result.error}`);
    console.log(`on ${result.adapter}, ${seconds} s:`);
    const failed = [];
    for (const r of result.reports) {
      console.log(
        `${r.format.padStart(5)}: ${r.identical}/${r.values} bit-identical to the cpu; vs cpu max abs ${r.maxAbsCpu.toExponential(2)}, rel ${r.maxRelCpu.toExponential(2)}, ` +
          `${(r.ratioCpu * 100).toFixed(0)}% of bound; vs exact max abs ${r.maxAbsExact.toExponential(2)}, rel ${r.maxRelExact.toExponential(2)}`,
      );
      if (r.failures.length) failed.push(`${r.format}: ${r.failures.join("; ")}`);
    }
    for (const r of result.operations) {
      // An infinite tolerance (reported only) arrives as null through JSON.
      const passed = r.tolerance === null || (r.tolerance === 0 ? r.identical === r.values : r.maxRel <= r.tolerance);
      console.log(`${r.operation.padStart(28)}: ${r.identical}/${r.values} bit-identical to the cpu; max |gpu − cpu| ${r.maxRel.toExponential(2)} of max |cpu|${passed ? "" : " FAILS"}`);
      if (!passed) failed.push(`${r.operation}: ${r.values - r.identical} of ${r.values} values differ from the CPU's (max ${r.maxRel.toExponential(2)}, allowed ${r.tolerance})`);
    }
    if (result.reports.length === 0 || result.operations.length === 0) throw new Failure("the kernel check returned no reports");
    if (errors.length) throw new Failure(`errors in the page: ${errors.join("; ")}`);
    if (failed.length) throw new Failure(`GPU products out of bounds:\n${failed.join("\n")}`);
    console.log(`gpu: ${result.reports.length} WGSL products and ${result.operations.length} operations match the CPU`);
  } finally {
    await browser.close();
    await server.close();
  }
}

main().catch((e) => {
  console.error(e instanceof Failure ? `gpu: FAIL: ${e.message}` : e);
  process.exit(1);
});
