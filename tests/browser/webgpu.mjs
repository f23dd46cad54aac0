// What the GPU checks in Chromium share (gpu.mjs, gpu-forward.mjs): the `webgpu` build's
// package, a server for it and the test pages, a headless Chromium on WebGPU (SwiftShader:
// REFERENCE.md §13), and pages that collect the errors they report.

import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serve } from "../../www/serve.mjs";
import { launchChromium, WEBGPU_ARGS } from "./chromium.mjs";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** A check's failure: printed as `NAME: FAIL: message`, without a stack. */
export class Failure extends Error {}

/** The `webgpu` package: `dir`, or $CARGO_TARGET_DIR/pkg-webgpu, or target/pkg-webgpu. */
export function webgpuPackage(dir) {
  const pkg = resolve(dir || join(process.env.CARGO_TARGET_DIR || join(root, "target"), "pkg-webgpu"));
  if (!existsSync(join(pkg, "candlewick.js"))) throw new Failure(`no webgpu package in ${pkg}: run \`make pkg-webgpu\``);
  return pkg;
}

/**
 * Serves the test pages, the package `pkg` at /gpu-pkg/ and `mounts`, starts Chromium with
 * WebGPU, runs `body(openPage)` and closes both. `openPage()` gives `{ page, errors }`: a page
 * at blank.html (http://127.0.0.1 is a secure context; WebGPU needs one) whose errors (an
 * uncaught one, or the console's: WebGPU reports a shader that does not compile there) go to
 * `errors`; it fails, saying so, when the page has no WebGPU.
 */
export async function withWebGpu(pkg, mounts, body) {
  const server = await serve({ port: 0, mounts: { "/test/": join(root, "tests/browser"), "/gpu-pkg/": pkg, ...mounts }, isolate: false });
  const browser = await launchChromium({}, WEBGPU_ARGS);
  const openPage = async () => {
    const page = await browser.context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    await page.goto(`${server.url}test/blank.html`);
    if (!(await page.evaluate(() => !!navigator.gpu))) {
      throw new Failure("navigator.gpu is undefined: this Chromium has no WebGPU (flags, or not a secure context)");
    }
    return { page, errors };
  };
  try {
    return await body(openPage);
  } finally {
    await browser.close();
    await server.close();
  }
}

/** `page.evaluate(fn, arg)`, or an `{ error }` after `ms`; an exception in the page is an `{ error }` too. */
export async function evaluateWithin(page, ms, fn, arg) {
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve({ error: `no result within ${ms / 1000} s` }), ms)));
  try {
    return await Promise.race([page.evaluate(fn, arg).catch((e) => ({ error: String(e?.message ?? e) })), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `main`, printing a Failure as `name: FAIL: message` (anything else with its stack), and exits 1 when it throws. */
export function runCheck(name, main) {
  main().catch((e) => {
    console.error(e instanceof Failure ? `${name}: FAIL: ${e.message}` : e);
    process.exit(1);
  });
}
