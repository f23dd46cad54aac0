// candlewick for browsers (and bundlers): the wasm module is fetched next to this file and
// initialised before the first import resolves, so `import { Model } from "candlewick"` is
// ready to use.
//
// Two builds of the same code: threads/ splits each forward pass over a pool of Web Workers
// that share its memory; the other runs on one thread. The threaded one needs
// SharedArrayBuffer, which a browser gives only to a cross-origin isolated page (COOP and COEP
// headers), and must run in a worker: its threads wait for each other with Atomics.wait, which
// a page's main thread may not call. Anywhere else, or when asked for one thread, this loads
// the single-thread build.

import { refuseFreed } from "./freed.js";

/** How many threads to run on: `globalThis.candlewickThreads` if set, else one per core. */
function wantedThreads() {
    const asked = globalThis.candlewickThreads;
    if (asked !== undefined && !(Number.isInteger(asked) && asked >= 1)) {
        throw new RangeError(`candlewickThreads must be a whole number ≥ 1, not ${asked}`);
    }
    const canShare = globalThis.crossOriginIsolated === true && typeof SharedArrayBuffer === "function";
    const inWorker = typeof WorkerGlobalScope === "function" && globalThis instanceof WorkerGlobalScope;
    if (!canShare || !inWorker || typeof Worker !== "function") return 1;
    return asked ?? globalThis.navigator?.hardwareConcurrency ?? 1;
}

/** The threaded build with its pool of `threads` workers started, or null if it would not start. */
async function threaded(threads) {
    try {
        const wasm = await import("./threads/candlewick.js");
        await wasm.default({ module_or_path: new URL("./threads/candlewick_bg.wasm", import.meta.url) });
        await wasm.initThreadPool(threads);
        return wasm;
    } catch (error) {
        console.warn(`candlewick: running on one thread, the threaded build did not start: ${error}`);
        return null;
    }
}

async function singleThreaded() {
    const wasm = await import("./candlewick.js");
    await wasm.default({ module_or_path: new URL("./candlewick_bg.wasm", import.meta.url) });
    return wasm;
}

const wanted = wantedThreads();
const wasm = (wanted > 1 && (await threaded(wanted))) || (await singleThreaded());

export const { Model, iterate } = wasm;
refuseFreed(Model);
