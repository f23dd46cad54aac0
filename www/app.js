// The demo page's main thread. It only draws: the model loads and generates in worker.js, which
// posts progress and chunks back here (the message protocol is described at its top).
//
// #status carries the page's state in data-state, for people and tests alike:
//   idle → loading → ready → generating → done | stopped | error → generating → …

/** The longest answer asked for; Stop ends one sooner. */
const MAX_TOKENS = 1024;

const $ = (id) => document.getElementById(id);
const ui = {
  modelForm: $("model-form"),
  select: $("model-select"),
  fileOption: $("model-select").querySelector('option[value="file"]'),
  file: $("model-file"),
  load: $("load"),
  device: $("device-select"),
  deviceInfo: $("device"),
  progress: $("progress"),
  progressText: $("progress-text"),
  status: $("status"),
  messages: $("messages"),
  chatForm: $("chat-form"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  speed: $("speed"),
  messageTemplate: $("message-template"),
};

// The CPU runs on one thread per core (the package's threaded build, when the page is
// cross-origin isolated); the GPU needs the single-thread build, the one with WebGPU. The worker
// is started again when the device asks for the other build.
let worker = null;
let workerThreads = null; // "1" for the single-thread build, "" for one thread per core
let pendingLoad = null; // a load waiting for the new worker to be ready

function startWorker(device) {
  const threads = device === "cpu" ? "" : "1";
  if (worker && threads === workerThreads) return;
  worker?.terminate();
  workerReady = false;
  workerThreads = threads;
  const url = new URL("./worker.js", import.meta.url);
  if (threads) url.searchParams.set("threads", threads);
  worker = new Worker(url, { type: "module" });
  worker.onmessage = ({ data }) => fromWorker[data.type](data);
  worker.onerror = (event) => {
    // An uncaught error inside the worker; a failed import (pkg/ not built) has no message.
    const message = event.message || "the worker script failed to load (is pkg/ built? run make pkg)";
    console.error(`worker: ${message}`);
    setState("error", `The model worker failed: ${message}`);
  };
}

let workerReady = false;
let modelInfo = null; // model.info() of the loaded model, null while none is
let modelBytes = 0; // the size of the model file, once progress has told it
let answer = null; // the reply being streamed: { element, text: Text node, chunks, firstAt }

// ---- What the worker says ----

const fromWorker = {
  ready() {
    workerReady = true;
    if (pendingLoad) {
      worker.postMessage(pendingLoad);
      pendingLoad = null;
    } else {
      setState("idle", "Choose a model and press Load.");
    }
  },

  progress({ phase, loaded, total }) {
    const verb = phase === "download" ? "Downloading" : "Loading";
    modelBytes = total;
    if (total > 0) {
      ui.progress.value = loaded / total;
      ui.progressText.textContent = `${verb} ${megabytes(loaded)} of ${megabytes(total)} MB`;
    } else {
      ui.progress.removeAttribute("value"); // indeterminate: the size is unknown
      ui.progressText.textContent = `${verb} ${megabytes(loaded)} MB`;
    }
  },

  loaded({ info, ms }) {
    modelInfo = info;
    ui.progress.value = 1;
    ui.progressText.textContent = modelBytes > 0 ? `${megabytes(modelBytes)} MB` : "";
    const threads = info.threads === 1 ? "1 thread" : `${info.threads} threads`;
    const facts = [info.architecture, info.contextLength && `context ${info.contextLength}`, threads].filter(Boolean);
    const invitation = info.hasChatTemplate
      ? "Say something."
      : "It has no chat template, so it continues what you write as plain text.";
    setState("ready", `${info.name || "The model"} (${facts.join(", ")}) loaded in ${seconds(ms)} s. ${invitation}`);
    showDevice(info);
  },

  loadFailed({ aborted, message }) {
    modelInfo = null;
    showDevice(null);
    ui.progress.value = 0;
    ui.progressText.textContent = "";
    if (aborted) setState("idle", "Loading cancelled.");
    else setState("error", `Could not load the model: ${message}`);
  },

  chunk({ chunk }) {
    if (chunk.type === "text") {
      answer.firstAt ??= performance.now();
      answer.chunks += 1;
      answer.element.dataset.chunks = answer.chunks;
      answer.text.appendData(chunk.text);
      showLiveSpeed();
      keepScrolledDown();
    } else if (chunk.type === "complete") {
      showUsage(chunk.usage, chunk.finishReason);
      if (chunk.finishReason === "cancelled") setState("stopped", "Stopped.");
      else setState("done", chunk.finishReason === "length" ? "Done (the token limit was reached)." : "Done.");
    } else if (chunk.type === "error") {
      answer.element.classList.add("error");
      answer.text.appendData(`${answer.text.length ? "\n" : ""}⚠ ${chunk.message}`);
      setState("error", `Generation failed: ${chunk.message}`);
    }
  },

  end({ cancelled }) {
    if (state() === "generating") {
      // The stream ended without a complete or error chunk: that is what stopping may do.
      if (cancelled) setState("stopped", "Stopped.");
      else setState("error", "Generation ended without a final chunk.");
    }
    // The worker's chat session keeps the conversation: a failed or stopped answer is not in it.
    if (state() === "error" || state() === "stopped") answer.element.classList.add("forgotten");
    answer = null;
    ui.prompt.focus();
  },
};

startWorker(ui.device.value);

// ---- What the user does ----

ui.file.addEventListener("change", () => {
  const [file] = ui.file.files;
  ui.fileOption.disabled = !file;
  ui.fileOption.textContent = file ? `Local file: ${file.name}` : "The local file below";
  if (file) ui.select.value = "file";
});

ui.modelForm.addEventListener("submit", (event) => {
  event.preventDefault();
  if (state() === "loading") {
    worker.postMessage({ type: "cancelLoad" });
    return;
  }
  const local = ui.select.value === "file";
  const source = local ? ui.file.files[0] : new URL(ui.select.value, location.href).href;
  modelInfo = null;
  modelBytes = 0;
  ui.messages.replaceChildren();
  ui.speed.value = "";
  ui.progress.value = 0;
  ui.progressText.textContent = "";
  const device = ui.device.value;
  const load = { type: "load", source, device };
  startWorker(device);
  if (workerReady) worker.postMessage(load);
  else pendingLoad = load;
  showDevice(null);
  setState("loading", `Loading ${local ? source.name : ui.select.selectedOptions[0].text} (device: ${device})…`);
});

// Switching the device with a model loaded loads it again on the other one.
ui.device.addEventListener("change", () => {
  if (modelInfo && !["loading", "generating"].includes(state())) ui.modelForm.requestSubmit();
  else startWorker(ui.device.value);
});

ui.chatForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const content = ui.prompt.value.trim();
  if (!content || ui.send.disabled) return;
  ui.prompt.value = "";
  addMessage("user").text.data = content;
  answer = { ...addMessage("assistant"), chunks: 0, firstAt: null };
  answer.element.dataset.chunks = 0;
  ui.speed.value = "";
  // A chat session answers in the conversation, running only the new message's tokens. A model
  // without a chat template (a base model) cannot chat: it continues the text as is.
  if (modelInfo.hasChatTemplate) worker.postMessage({ type: "send", content, options: { maxTokens: MAX_TOKENS } });
  else worker.postMessage({ type: "generate", prompt: content, options: { maxTokens: MAX_TOKENS, raw: true } });
  setState("generating", "Writing…");
  keepScrolledDown();
});

ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.chatForm.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => {
  worker.postMessage({ type: "stop" });
  ui.stop.disabled = true;
  ui.status.textContent = "Stopping…";
});

// ---- Drawing ----

function state() {
  return ui.status.dataset.state;
}

/** Sets the page's state, its status line, and which controls can be used in it. */
function setState(name, text) {
  const loading = name === "loading";
  const generating = name === "generating";
  ui.status.dataset.state = name;
  ui.status.textContent = text;
  ui.load.textContent = loading ? "Cancel" : "Load";
  ui.load.disabled = !workerReady || generating;
  ui.select.disabled = loading || generating;
  ui.device.disabled = loading || generating;
  ui.file.disabled = loading || generating;
  ui.send.disabled = !modelInfo || loading || generating;
  ui.stop.disabled = !generating;
  // Screen readers announce the answer once it is whole, not every token of it.
  ui.messages.setAttribute("aria-busy", String(generating));
}

/** Says which device the model runs on, and why not the one asked for. */
function showDevice(info) {
  ui.deviceInfo.dataset.device = info?.device ?? "";
  if (!info) {
    ui.deviceInfo.textContent = "No model loaded.";
    return;
  }
  const on = info.device === "gpu" ? `the GPU (${info.adapter})` : "the CPU (WebAssembly)";
  ui.deviceInfo.textContent = `Running on ${on}.${info.deviceReason ? ` Not on the GPU: ${info.deviceReason}` : ""}`;
}

/** Appends an empty message; returns its element and the Text node its words go into. */
function addMessage(role) {
  const element = ui.messageTemplate.content.firstElementChild.cloneNode(true);
  element.classList.add(role);
  element.querySelector(".role").textContent = role === "user" ? "You" : "Model";
  const text = document.createTextNode("");
  element.querySelector(".text").append(text);
  ui.messages.append(element);
  return { element, text };
}

/** Tokens per second while the answer streams, counting each text chunk as a token. */
function showLiveSpeed() {
  const elapsed = (performance.now() - answer.firstAt) / 1000;
  const rate = elapsed > 0 ? ` · ${((answer.chunks - 1) / elapsed).toFixed(1)} tokens/s` : "";
  ui.speed.value = `${answer.chunks} tokens${rate}`;
}

function showUsage(usage, finishReason) {
  ui.speed.value =
    `${usage.completionTokens} tokens · ${usage.decodeTokensPerSecond.toFixed(1)} tokens/s` +
    ` · prompt ${usage.promptTokens} tokens (${usage.cachedTokens} cached) at ${usage.prefillTokensPerSecond.toFixed(0)} tokens/s` +
    ` · first token after ${usage.timeToFirstTokenMs.toFixed(0)} ms · ${finishReason}`;
}

/** Follows the answer as it grows, unless the reader has scrolled up to read something else. */
function keepScrolledDown() {
  const list = ui.messages;
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  if (nearBottom) list.scrollTop = list.scrollHeight;
}

function megabytes(bytes) {
  return (bytes / 1e6).toFixed(1);
}

function seconds(ms) {
  return (ms / 1000).toFixed(1);
}
