// Debian's headless Chromium through playwright-core (which never downloads a browser of its
// own), in a throwaway profile: what the browser tests and the browser benchmark run in.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * WebGPU on SwiftShader, Chromium's software Vulkan: how a machine without a GPU runs WebGPU
 * (REFERENCE.md §13). The page must come from http://127.0.0.1 (a secure context).
 */
export const WEBGPU_ARGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--enable-unsafe-swiftshader"];

/**
 * Starts Chromium; `options` go to playwright's launchPersistentContext (e.g. `viewport`),
 * `extraArgs` after the usual flags (e.g. WEBGPU_ARGS), and `hardwareGpu` leaves the GPU on.
 * @returns {Promise<{ context: import("playwright-core").BrowserContext, close: () => Promise<void> }>}
 */
export async function launchChromium(options = {}, extraArgs = [], { hardwareGpu = false } = {}) {
  const profile = await mkdtemp(join(tmpdir(), "candlewick-chromium-"));
  try {
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      // hardwareGpu: without --disable-gpu, so that WebGPU may use the machine's own GPU.
      args: [...ARGS.filter((a) => !(hardwareGpu && a === "--disable-gpu")), ...extraArgs],
      ...options,
    });
    return {
      context,
      close: async () => {
        await context.close();
        await rm(profile, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await rm(profile, { recursive: true, force: true });
    throw error;
  }
}
