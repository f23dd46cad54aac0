// candlewick's side of the browser benchmark, in a module Web Worker (wllama runs in its own
// worker, so both generate off the page's main thread). It drives the package exactly as the
// README shows and posts every chunk to the page the moment the stream yields it; the page
// stamps the arrival times.
//
// Messages in:  { id, op: "load", url, device } (answers model.info()) | { id, op: "generate", text, maxTokens } | { id, op: "free" }
// Messages out: { id, kind: "chunk", chunk } or { id, kind: "log", line } … then { id, kind: "done", value } or { id, kind: "error", message }

// The number of threads comes in this module's URL (`?threads=N`), since the package reads it
// when first imported: 1 is the single-thread build, more the threaded one.
globalThis.candlewickThreads = Number(new URL(import.meta.url).searchParams.get("threads") ?? 1);

// Imported dynamically so that onmessage is in place at once: pkg/index.js initialises the wasm
// with a top-level await, and a static import would hold this module's evaluation (and the
// handler below) back until then, while messages the page posts meanwhile are dropped.
const candlewick = import("/pkg/index.js");

let model = null;

const ops = {
  async load({ id, url, device }) {
    // Progress goes to the page's log, one line per phase and per 25 %.
    let last = "";
    const onProgress = ({ phase, loaded, total }) => {
      const step = `${phase} ${total ? Math.floor((loaded / total) * 4) * 25 : "?"}%`;
      if (step !== last) self.postMessage({ id, kind: "log", line: `candlewick: ${step} of ${total} bytes` });
      last = step;
    };
    const { Model } = await candlewick;
    model = await Model.load(url, { cache: false, onProgress, device });
    return model.info();
  },
  async generate({ id, text, maxTokens }) {
    if (!model) throw new Error("generate before load");
    const { iterate } = await candlewick;
    const stream = model.generate(text, { raw: true, maxTokens, temperature: 0 });
    for await (const chunk of iterate(stream)) {
      self.postMessage({ id, kind: "chunk", chunk });
    }
  },
  async free() {
    model?.free();
    model = null;
  },
};

self.onmessage = async ({ data }) => {
  try {
    const value = await ops[data.op](data);
    self.postMessage({ id: data.id, kind: "done", value });
  } catch (error) {
    self.postMessage({ id: data.id, kind: "error", message: String(error?.stack ?? error) });
  }
};
