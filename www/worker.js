// The model lives here, off the page's thread: loading parses hundreds of megabytes and every
// token is a forward pass, and either would freeze the page. app.js sends requests, this posts
// back what happens.
//
//   page → worker: { type: "load", source, device }  (a URL string or a File; "cpu", "gpu" or "auto")
//                  { type: "cancelLoad" }
//                  { type: "generate", prompt, options }  (model.generate's arguments)
//                  { type: "send", content, options }  a user message, answered in the chat
//                                                     session (chat.send's arguments)
//                  { type: "stop" }
//   worker → page: { type: "ready" }  once the WebAssembly module is initialised
//                  { type: "progress", phase, loaded, total }
//                  { type: "loaded", info, ms }
//                  { type: "loadFailed", aborted, message }
//                  { type: "chunk", chunk }  each chunk of the generation's stream, as is
//                  { type: "end", cancelled }  after the last chunk, however the stream ended
//
// The page sends one load or one generation at a time, and waits for its answer.
//
// A model with a chat template gets a chat session when it loads: it keeps the conversation
// and its KV cache, so each message runs only its own tokens, not the whole conversation
// again. A stopped answer is not kept in it. Chat sessions run on the CPU for now, so a model on
// the GPU keeps the conversation here instead and has it all generated again each turn.
//
// worker.js?threads=1 runs the package on one thread: its single-thread build is the one with
// WebGPU (app.js starts it so for the GPU).

if (new URL(self.location.href).searchParams.get("threads") === "1") globalThis.candlewickThreads = 1;
const { Model, iterate } = await import("../pkg/index.js");

/** Progress events are posted at most this often (the last one of a phase always is). */
const PROGRESS_INTERVAL_MS = 50;

let model = null;
let chat = null; // the chat session of a model with a chat template (on the CPU)
let conversation = null; // the messages so far, for a model with a chat template on the GPU
let loading = null; // the AbortController of the load in progress
let generating = null; // the AbortController of the generation in progress

const handlers = {
  async load({ source, device }) {
    // Free the old weights first: two models may not fit in memory together.
    chat?.free();
    chat = null;
    conversation = null;
    model?.free();
    model = null;
    loading = new AbortController();
    const started = performance.now();
    try {
      model = await Model.load(source, { signal: loading.signal, onProgress: throttledProgress(), device });
      const info = model.info();
      if (info.hasChatTemplate && info.device === "gpu") conversation = [];
      else if (info.hasChatTemplate) chat = model.chat();
      postMessage({ type: "loaded", info: model.info(), ms: performance.now() - started });
    } catch (error) {
      postMessage({ type: "loadFailed", aborted: error?.name === "AbortError", message: describe(error) });
    } finally {
      loading = null;
    }
  },

  cancelLoad() {
    loading?.abort();
  },

  generate({ prompt, options }) {
    return stream((signal) => model.generate(prompt, { ...options, signal }));
  },

  async send({ content, options }) {
    if (chat) return stream((signal) => chat.send(content, { ...options, signal }));
    // On the GPU: the whole conversation each turn; the reply joins it once complete.
    const messages = [...conversation, { role: "user", content }];
    let reply = null;
    await stream((signal) => model.generate(messages, { ...options, signal }), (chunk) => {
      if (chunk.type === "complete" && chunk.finishReason !== "cancelled") reply = chunk.text;
    });
    if (reply !== null) conversation = [...messages, { role: "assistant", content: reply }];
  },

  stop() {
    generating?.abort();
  },
};

/** Posts each chunk of the stream `start(signal)` returns (seen by `onChunk` too), then the end. */
async function stream(start, onChunk) {
    generating = new AbortController();
    const { signal } = generating;
    try {
      const stream = start(signal);
      for await (const chunk of iterate(stream)) {
        onChunk?.(chunk);
        postMessage({ type: "chunk", chunk });
      }
    } catch (error) {
      // Aborting may end the stream with an AbortError rather than a "cancelled" chunk.
      if (!signal.aborted) postMessage({ type: "chunk", chunk: { type: "error", message: describe(error) } });
    } finally {
      generating = null;
      postMessage({ type: "end", cancelled: signal.aborted });
    }
}

/** An onProgress callback that posts to the page, thinned out to one post per interval. */
function throttledProgress() {
  let last = { phase: null, at: 0 };
  return ({ phase, loaded, total }) => {
    const now = performance.now();
    const final = phase !== last.phase || loaded === total;
    if (!final && now - last.at < PROGRESS_INTERVAL_MS) return;
    last = { phase, at: now };
    postMessage({ type: "progress", phase, loaded, total });
  };
}

function describe(error) {
  return error instanceof Error ? error.message : String(error);
}

self.onmessage = ({ data }) => handlers[data.type](data);
postMessage({ type: "ready" });
