// The GPU's WGSL products against the CPU kernels, and its other operations against the CPU
// backend's, in a real headless Chromium on WebGPU (SwiftShader, Chromium's software Vulkan):
// src/gpu/check.rs, which states and justifies the tolerances, run in the page through the
// `webgpu` build's `gpuKernelCheck()`. Fails, saying so, when the page has no WebGPU adapter:
// it never skips.
//
//   make test-gpu                       (builds the `webgpu` package, then runs this)
//   node tests/browser/gpu.mjs [DIR]    (DIR: that package, by default
//                                        $CARGO_TARGET_DIR/pkg-webgpu or target/pkg-webgpu)

import { evaluateWithin, Failure, runCheck, webgpuPackage, withWebGpu } from "./webgpu.mjs";

/** SwiftShader is slow; the products are small. */
const RUN_TIMEOUT_MS = 120_000;

async function main() {
  const pkg = webgpuPackage(process.argv[2]);
  await withWebGpu(pkg, {}, async (openPage) => {
    const { page, errors } = await openPage();
    const started = Date.now();
    const result = await evaluateWithin(page, RUN_TIMEOUT_MS, async () => {
      const wasm = await import("/gpu-pkg/candlewick.js");
      await wasm.default();
      return await wasm.gpuKernelCheck();
    });
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
  });
}

runCheck("gpu", main);
