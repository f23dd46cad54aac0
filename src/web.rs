//! Browser and Node.js shell (WebAssembly): the JavaScript API of the npm package.
//!
//! Models arrive as bytes — fetched from a URL (kept in the Cache API), read from a `Blob` or
//! `File`, or handed over as a `Uint8Array` / `ArrayBuffer` — and are copied once into wasm
//! memory, where the weights use them in place. A generation is a JS `ReadableStream` of chunk
//! objects, driven one token per read, yielding to the event loop between tokens. Everything
//! between (parsing, tokenizer, template, forward passes, sampling, stop logic) is the code the
//! native build runs.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Reflect, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::chat::Message;
use crate::error::Error;
use crate::generator::{GenerateOptions, Generator, Prompt};
use crate::grammar::Grammar;
use crate::model;
use crate::sampling::SamplingConfig;
use crate::session::Session;
use crate::stream::Chunk;
use crate::tools::ToolChoice;

#[wasm_bindgen(inline_js = r#"
// Resolves after the event loop has run other tasks (messages from the page, timers, input):
// setImmediate in Node.js; a MessageChannel elsewhere, which, unlike setTimeout, is not
// clamped to 4 ms when chained.
let channel;
export function nextTask() {
    if (typeof setImmediate === "function") return new Promise((resolve) => setImmediate(resolve));
    if (!channel) {
        channel = new MessageChannel();
        channel.waiting = [];
        channel.port1.onmessage = () => channel.waiting.shift()();
    }
    return new Promise((resolve) => {
        channel.waiting.push(resolve);
        channel.port2.postMessage(0);
    });
}

function abortError(signal) {
    return signal.reason ?? new DOMException("The operation was aborted.", "AbortError");
}

function checkAborted(signal) {
    if (signal?.aborted) throw abortError(signal);
}

async function pump(stream, total, phase, extra, push, progress, signal) {
    const reader = stream.getReader();
    let loaded = 0;
    try {
        for (;;) {
            checkAborted(signal);
            const { done, value } = await reader.read();
            if (done) break;
            push(value);
            loaded += value.byteLength;
            progress?.({ phase, loaded, total: total ?? loaded, ...extra });
        }
        checkAborted(signal);
    } catch (e) {
        reader.cancel().catch(() => {});
        throw e;
    }
}

// Reads `source` (a URL, Blob, ArrayBuffer or typed array) into wasm memory through
// `reserve(bytes)` and `push(Uint8Array)`, reporting { phase, loaded, total } to `progress`.
export async function readSource(source, useCache, signal, progress, reserve, push) {
    checkAborted(signal);
    if (typeof source === "string" || source instanceof URL) {
        const url = new URL(String(source), globalThis.location?.href).href;
        const cache = useCache && typeof caches !== "undefined" ? await caches.open("candlewick-models") : null;
        let response = cache ? await cache.match(url) : undefined;
        if (response) {
            const total = Number(response.headers.get("content-length")) || undefined;
            progress?.({ phase: "download", loaded: total ?? 0, total: total ?? 0, cached: true });
        } else {
            response = await fetch(url, { signal });
            if (!response.ok) throw new Error(`fetching ${url}: HTTP ${response.status} ${response.statusText}`.trim());
            const total = Number(response.headers.get("content-length")) || undefined;
            if (cache && response.body) {
                // Network to the cache (on disk), then the cache to memory: the file is never
                // held twice in memory while it downloads.
                let loaded = 0;
                const counted = response.body.pipeThrough(new TransformStream({
                    transform(chunk, controller) {
                        loaded += chunk.byteLength;
                        progress?.({ phase: "download", loaded, total: total ?? loaded, cached: false });
                        controller.enqueue(chunk);
                    },
                }));
                try {
                    await cache.put(url, new Response(counted, { headers: response.headers }));
                } catch (e) {
                    checkAborted(signal); // an aborted download fails the put: report the abort
                    throw e;
                }
                checkAborted(signal);
                response = await cache.match(url);
            } else {
                if (total) reserve(total);
                if (!response.body) throw new Error(`fetching ${url}: the response has no body`);
                await pump(response.body, total, "download", { cached: false }, push, progress, signal);
                return;
            }
        }
        const total = Number(response.headers.get("content-length")) || undefined;
        if (total) reserve(total);
        await pump(response.body, total, "load", {}, push, progress, signal);
        return;
    }
    if (typeof Blob !== "undefined" && source instanceof Blob) {
        reserve(source.size);
        await pump(source.stream(), source.size, "load", {}, push, progress, signal);
        return;
    }
    let bytes;
    if (source instanceof ArrayBuffer) bytes = new Uint8Array(source);
    else if (ArrayBuffer.isView(source)) bytes = new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
    else throw new TypeError("Model.load: the source must be a URL string, a Uint8Array, an ArrayBuffer or a Blob");
    reserve(bytes.byteLength);
    push(bytes);
    progress?.({ phase: "load", loaded: bytes.byteLength, total: bytes.byteLength });
}

// A ReadableStream pulling one chunk per read from `next()` (undefined at the end, or a promise
// of either), after
// `prefill()` has run the prompt a batch at a time (it returns false when the rest is for
// `next`); `stop()` ends the generation. The event loop runs between batches and tokens, so
// cancelling the reader or aborting `signal` stops it before the next one.
export function chunkStream(prefill, next, stop, signal) {
    let finished = false;
    const finish = () => {
        if (!finished) {
            finished = true;
            stop();
        }
    };
    return new ReadableStream({
        start(controller) {
            signal?.addEventListener("abort", () => {
                if (finished) return;
                finish();
                controller.error(abortError(signal));
            }, { once: true });
            if (signal?.aborted) {
                finish();
                controller.error(abortError(signal));
            }
        },
        async pull(controller) {
            await nextTask();
            while (!finished && prefill()) await nextTask();
            if (finished) return;
            // A chunk, or (on the GPU) a promise of one: the logits are read back asynchronously.
            const chunk = await next();
            if (finished) return;
            if (chunk === undefined) {
                finish();
                controller.close();
            } else {
                controller.enqueue(chunk);
            }
        },
        cancel() {
            finish();
        },
    }, { highWaterMark: 0 });
}

// Whether this context has WebGPU at all (navigator.gpu), before wgpu is asked for an adapter.
export function hasWebGpu() {
    return typeof navigator !== "undefined" && !!navigator.gpu;
}

// The name of the adapter navigator.gpu gives (wgpu's own adapter info is empty in a browser):
// "google swiftshader", "nvidia ampere", …; null without one.
export async function webGpuAdapterName() {
    const adapter = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
    const info = adapter?.info;
    if (!info) return null;
    const name = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(" ");
    return name || "an unnamed WebGPU adapter";
}

// An async iterator over a ReadableStream, for browsers where ReadableStream is not async
// iterable (Safari). Leaving the loop early cancels the stream.
export function iterate(stream) {
    const reader = stream.getReader();
    return {
        next() {
            return reader.read();
        },
        async return(value) {
            await reader.cancel();
            reader.releaseLock();
            return { done: true, value };
        },
        [Symbol.asyncIterator]() {
            return this;
        },
    };
}
"#)]
extern "C" {
    #[wasm_bindgen(js_name = readSource, catch)]
    async fn read_source(source: &JsValue, use_cache: bool, signal: &JsValue, progress: &JsValue, reserve: &Function, push: &Function) -> Result<(), JsValue>;

    #[wasm_bindgen(js_name = chunkStream)]
    fn chunk_stream(prefill: &Function, next: &Function, stop: &Function, signal: &JsValue) -> JsValue;

    #[wasm_bindgen(js_name = iterate)]
    fn iterate_stream(stream: &JsValue) -> JsValue;

    #[wasm_bindgen(js_name = hasWebGpu)]
    fn has_web_gpu() -> bool;

    #[wasm_bindgen(js_name = webGpuAdapterName)]
    async fn web_gpu_adapter_name() -> JsValue;
}

/// The name of the adapter `navigator.gpu` gives (wgpu's adapter info is empty in a browser).
async fn browser_adapter_name() -> String {
    web_gpu_adapter_name().await.as_string().unwrap_or_else(|| "an unnamed WebGPU adapter".into())
}

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Where a load is: bytes arriving from the network, then read into memory and the model. */
export interface LoadProgress { phase: "download" | "load"; loaded: number; total: number; cached?: boolean }
export interface LoadOptions {
    onProgress?: (progress: LoadProgress) => void;
    signal?: AbortSignal;
    /** Keep a downloaded file in the Cache API (default true). */
    cache?: boolean;
    /**
     * Where `generate` runs the forward passes: "cpu" (the default), "gpu" (WebGPU; throws when
     * the GPU cannot run the model, saying why) or "auto" (the GPU when it can run the model,
     * else the CPU; `info().deviceReason` says why not).
     */
    device?: "auto" | "gpu" | "cpu";
}
/** A tool call in a conversation, in OpenAI's shape (`arguments` is a JSON object as text). */
export interface ToolCallMessage { id: string; type?: "function"; function: { name: string; arguments: string } }
export interface ChatMessage {
    role: "system" | "user" | "assistant" | "tool";
    content: string | null;
    /** The tools an assistant message calls (`tool_calls` is accepted too). */
    toolCalls?: ToolCallMessage[];
    /** The call a `tool` message answers (`tool_call_id` is accepted too). */
    toolCallId?: string;
}
/** A function the model may call: OpenAI's shape, or the function object alone. */
export type Tool =
    | { type: "function"; function: { name: string; description?: string; parameters?: object } }
    | { name: string; description?: string; parameters?: object };
/**
 * "auto" (the model decides; the default), "none" (no tools offered), "required" or a
 * function (by name or `{ type: "function", function: { name } }`); the last two need grammar
 * support, which is not yet available, and throw.
 */
export type ToolChoice = "auto" | "none" | "required" | string | { type: "function"; function: { name: string } };
export interface GenerateOptions {
    maxTokens?: number;
    /** 0 is greedy. */
    temperature?: number;
    topK?: number;
    topP?: number;
    minP?: number;
    repeatPenalty?: number;
    frequencyPenalty?: number;
    presencePenalty?: number;
    penaltyLastN?: number;
    seed?: number;
    stop?: string | string[];
    /** Feed a string prompt as is, without the chat template. */
    raw?: boolean;
    contextLength?: number;
    signal?: AbortSignal;
    /** Functions the model may call; its calls arrive as `toolCall` chunks. */
    tools?: Tool[];
    toolChoice?: ToolChoice;
    /** Constrain the output to this GBNF grammar (llama.cpp's syntax; generation starts at `root`). */
    grammar?: string;
    /** Constrain the output to JSON this JSON Schema describes (an object, or its JSON text), converted to a grammar as llama.cpp converts it. */
    jsonSchema?: object | string;
}
/** Options of `model.chat`: the conversation to start from, and defaults for every turn. */
export interface ChatOptions extends Omit<GenerateOptions, "raw" | "signal"> {
    /** A system message that opens the conversation. */
    system?: string;
    /** Messages the conversation starts with (after `system`). */
    messages?: ChatMessage[];
}
/** Options of one turn: the chat's defaults, overridden. */
export type TurnOptions = Omit<GenerateOptions, "raw">;
export interface Usage {
    promptTokens: number;
    /** Prompt tokens a chat session kept in its cache from earlier turns (not run again). */
    cachedTokens: number;
    completionTokens: number;
    timeToFirstTokenMs: number;
    prefillTokensPerSecond: number;
    decodeTokensPerSecond: number;
}
export type Chunk =
    | { type: "text"; text: string }
    | { type: "toolCall"; id: string; name: string; arguments: string }
    | { type: "complete"; text: string; finishReason: "stop" | "length" | "toolCalls" | "cancelled"; stop: string | null; usage: Usage }
    | { type: "error"; message: string };
export interface ModelInfo {
    architecture: string;
    name: string | null;
    contextLength: number | null;
    vocabSize: number;
    tokenizerModel: string;
    tokenizerPre: string | null;
    bosTokenId: number | null;
    addBosToken: boolean;
    endOfGenerationIds: number[];
    hasChatTemplate: boolean;
    tensorCount: number;
    /** How many threads the forward passes run on: 1, or the threaded build's pool size. */
    threads: number;
    /** Where `generate` runs the forward passes (chat sessions run on the CPU for now). */
    device: "gpu" | "cpu";
    /** Why `device` is not what `load` was asked for (or, asked for "auto", why not the GPU); null otherwise. */
    deviceReason: string | null;
    /** The GPU adapter's name, when `device` is "gpu"; null otherwise. */
    adapter: string | null;
}
export interface TokenizeOptions { addSpecial?: boolean; parseSpecial?: boolean }
"#;

#[wasm_bindgen]
extern "C" {
    /// `LoadOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "LoadOptions")]
    pub type LoadOptions;
    /// `GenerateOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "GenerateOptions")]
    pub type JsGenerateOptions;
    /// `TokenizeOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "TokenizeOptions")]
    pub type TokenizeOptions;
    /// `ChatOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "ChatOptions")]
    pub type JsChatOptions;
    /// `TurnOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "TurnOptions")]
    pub type JsTurnOptions;
}

/// An async iterator over a `ReadableStream` (such as `model.generate(...)`), for
/// `for await (const chunk of iterate(stream))` in every browser. Leaving the loop early
/// cancels the stream.
#[wasm_bindgen(unchecked_return_type = "AsyncIterableIterator<Chunk>")]
pub fn iterate(#[wasm_bindgen(unchecked_param_type = "ReadableStream<Chunk>")] stream: JsValue) -> JsValue {
    iterate_stream(&stream)
}

/// A language model loaded from a GGUF file.
#[wasm_bindgen(js_name = Model)]
pub struct WebModel {
    model: model::Model,
    /// The weights on the GPU, when `generate` runs there.
    #[cfg(feature = "webgpu")]
    gpu: Option<Rc<crate::arch::Weights<crate::gpu::Gpu>>>,
    /// The GPU adapter's name, when `gpu` is there.
    adapter: Option<String>,
    /// Why the model is not on the device `load` was asked for (or, for `"auto"`, not on the GPU).
    device_reason: Option<String>,
}

/// The `device` option of `Model.load`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DeviceChoice {
    Auto,
    Gpu,
    Cpu,
}

#[wasm_bindgen(js_class = Model)]
impl WebModel {
    /// Loads a GGUF model. `source` is a URL string, a `Uint8Array`, an `ArrayBuffer` or a
    /// `Blob`/`File`. Options: `onProgress({ phase, loaded, total })` in bytes (`"download"`
    /// from the network, then `"load"` into memory and into the model); `signal`, an
    /// `AbortSignal` that rejects with an `AbortError`; `cache` (default `true`): keep a
    /// downloaded file in the Cache API so a reload does not fetch it again.
    pub async fn load(
        #[wasm_bindgen(unchecked_param_type = "string | URL | Uint8Array | ArrayBuffer | Blob")] source: JsValue,
        options: Option<LoadOptions>,
    ) -> Result<WebModel, JsValue> {
        let options = Options::new(options.map(JsCast::unchecked_into), &[&["onProgress", "signal", "cache", "device"]], "Model.load")?;
        let device = match options.get("device") {
            v if v.is_undefined() => DeviceChoice::Cpu,
            v => match v.as_string().as_deref() {
                Some("auto") => DeviceChoice::Auto,
                Some("gpu") => DeviceChoice::Gpu,
                Some("cpu") => DeviceChoice::Cpu,
                _ => return Err(type_error(&format!("Model.load: `device` must be \"auto\", \"gpu\" or \"cpu\", not {}", js_sys::JSON::stringify(&v).ok().and_then(|t| t.as_string()).unwrap_or_else(|| "that".into())))),
            },
        };
        let progress = options.function("onProgress")?;
        let signal = options.get("signal");
        let use_cache = options.bool("cache")?.unwrap_or(true);

        let file = Rc::new(RefCell::new(Vec::<u8>::new()));
        // A file too large for wasm32's memory is refused before it is allocated (or, with no
        // size known in advance, as soon as it grows past the limit).
        let reserve = {
            let file = file.clone();
            Closure::<dyn FnMut(f64) -> Result<(), JsValue>>::new(move |bytes: f64| {
                check_model_size(bytes as u64).map_err(js_error)?;
                let mut file = file.borrow_mut();
                let extra = (bytes as usize).saturating_sub(file.len());
                file.reserve_exact(extra);
                Ok(())
            })
        };
        let push = {
            let file = file.clone();
            Closure::<dyn FnMut(Uint8Array) -> Result<(), JsValue>>::new(move |chunk: Uint8Array| {
                let mut file = file.borrow_mut();
                let start = file.len();
                check_model_size(start as u64 + u64::from(chunk.length())).map_err(js_error)?;
                file.resize(start + chunk.length() as usize, 0);
                chunk.copy_to(&mut file[start..]);
                Ok(())
            })
        };
        let progress_js = progress.clone().map_or(JsValue::UNDEFINED, JsValue::from);
        read_source(&source, use_cache, &signal, &progress_js, reserve.as_ref().unchecked_ref(), push.as_ref().unchecked_ref()).await?;
        drop((reserve, push));

        let file = std::mem::take(&mut *file.borrow_mut());
        let total = file.len() as f64;
        let report = |loaded: f64| {
            if let Some(progress) = &progress {
                let event = object(&[("phase", "load".into()), ("loaded", loaded.into()), ("total", total.into())]);
                // A failing progress callback must not fail the load.
                let _ = progress.call1(&JsValue::NULL, &event);
            }
        };
        let file = crate::bytes::Bytes::from(file);
        let model = model::Model::from_bytes_with_progress(file.clone(), |done, _| report(done as f64)).map_err(js_error)?;
        report(total);
        let (gpu, device_reason) = match device {
            DeviceChoice::Cpu => (None, None),
            _ => match place_on_gpu(&model, file).await {
                Ok(gpu) => (Some(gpu), None),
                Err(reason) if device == DeviceChoice::Gpu => {
                    return Err(js_sys::Error::new(&format!("Model.load: the GPU cannot run this model: {reason} (load it with device: \"cpu\" or \"auto\")")).into())
                }
                Err(reason) => (None, Some(reason)),
            },
        };
        let adapter = match gpu.is_some() {
            true => Some(browser_adapter_name().await),
            false => None,
        };
        #[cfg(not(feature = "webgpu"))]
        let _: Option<()> = gpu;
        Ok(WebModel {
            model,
            #[cfg(feature = "webgpu")]
            gpu,
            adapter,
            device_reason,
        })
    }

    /// Generates from `prompt` — a string (one user message, put through the model's chat
    /// template unless `raw` is set) or an array of `{ role, content }` messages — and returns a
    /// `ReadableStream` of chunks: `{ type: "text", text }` and `{ type: "toolCall", id, name,
    /// arguments }`, then `{ type: "complete", text, finishReason, stop, usage }` or `{ type:
    /// "error", message }`. Options: `maxTokens`, `temperature` (0 is greedy), `topK`, `topP`,
    /// `minP`, `repeatPenalty`, `frequencyPenalty`, `presencePenalty`, `penaltyLastN`, `seed`,
    /// `stop` (a string or an array), `raw`, `contextLength`, `tools`, `toolChoice`, `signal`,
    /// `grammar` (GBNF text) or `jsonSchema` (an object or its JSON text). Cancelling the reader
    /// or aborting the signal stops generation before the next token. A bad option (a grammar or
    /// schema that does not convert, too) throws.
    #[wasm_bindgen(unchecked_return_type = "ReadableStream<Chunk>")]
    pub fn generate(&self, #[wasm_bindgen(unchecked_param_type = "string | ChatMessage[]")] prompt: JsValue, options: Option<JsGenerateOptions>) -> Result<JsValue, JsValue> {
        let options = Options::new(options.map(JsCast::unchecked_into), GENERATE_OPTIONS, "generate")?;
        let raw = options.bool("raw")?.unwrap_or(false);
        let prompt = if let Some(text) = prompt.as_string() {
            if raw {
                Prompt::Raw(text)
            } else {
                Prompt::User(text)
            }
        } else {
            if raw && Array::is_array(&prompt) {
                return Err(type_error("generate: `raw` applies to a string prompt, not to messages"));
            }
            Prompt::Messages(messages_from_js(&prompt, "generate")?)
        };
        #[cfg(feature = "webgpu")]
        if let Some(gpu) = &self.gpu {
            if let Some(why) = gpu.backend().lost() {
                return Err(js_sys::Error::new(&format!("generate: the GPU device was lost ({why}); load the model again")).into());
            }
            let (generator, capacity) = Generator::on_device(&self.model, prompt, options.generate_options()?).map_err(js_error)?;
            let state = gpu.new_state(capacity).map_err(js_error)?;
            return Ok(gpu_stream(GpuRun { generator, weights: gpu.clone(), state }, &options.get("signal")));
        }
        let generator = self.model.generator(prompt, options.generate_options()?).map_err(js_error)?;
        Ok(stream(generator, &options.get("signal")))
    }

    /// A chat session: a conversation that keeps its KV cache from one turn to the next, so a
    /// turn runs only the tokens that are new. Options: `system`, `messages` (the conversation
    /// to start from) and the options of `generate` (but `raw` and `signal`) as defaults for
    /// every turn.
    pub fn chat(&self, options: Option<JsChatOptions>) -> Result<ChatSession, JsValue> {
        let object: Object = options.map(JsCast::unchecked_into).unwrap_or_default();
        let checked = Options::new(Some(object.clone()), CHAT_OPTIONS, "chat")?;
        checked.generate_options()?;
        let mut messages = Vec::new();
        if let Some(system) = checked.get("system").as_string() {
            messages.push(Message::system(system));
        } else if !checked.get("system").is_undefined() {
            return Err(type_error("chat: `system` must be a string"));
        }
        let initial = checked.get("messages");
        if !initial.is_undefined() {
            messages.extend(messages_from_js(&initial, "chat")?);
        }
        let mut session = Session::new(&self.model).map_err(js_error)?;
        session.set_messages(messages).map_err(js_error)?;
        Ok(ChatSession { session, defaults: object })
    }

    /// Restores a chat session saved with `chat.save()` for this model; `options` as `chat`'s
    /// (its `system` and `messages` are ignored: the conversation is the saved one).
    #[wasm_bindgen(js_name = restoreChat)]
    pub fn restore_chat(&self, bytes: &[u8], options: Option<JsChatOptions>) -> Result<ChatSession, JsValue> {
        let object: Object = options.map(JsCast::unchecked_into).unwrap_or_default();
        Options::new(Some(object.clone()), CHAT_OPTIONS, "restoreChat")?.generate_options()?;
        let session = Session::restore(&self.model, bytes).map_err(js_error)?;
        Ok(ChatSession { session, defaults: object })
    }

    /// Facts about the model: `{ architecture, name, contextLength, vocabSize, tokenizerModel,
    /// tokenizerPre, bosTokenId, addBosToken, endOfGenerationIds, hasChatTemplate, tensorCount,
    /// threads, device, deviceReason, adapter }`, `threads` being how many threads its forward
    /// passes run on, `device` where `generate` runs them (`"gpu"` or `"cpu"`), `deviceReason`
    /// why that is not what `load` was asked for, `adapter` the GPU's name.
    #[wasm_bindgen(unchecked_return_type = "ModelInfo")]
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let info = to_js(&self.model.info().map_err(js_error)?);
        let _ = Reflect::set(&info, &"threads".into(), &(threads() as f64).into());
        let adapter = self.adapter.clone();
        let device = if adapter.is_some() { "gpu" } else { "cpu" };
        let _ = Reflect::set(&info, &"device".into(), &device.into());
        let _ = Reflect::set(&info, &"deviceReason".into(), &self.device_reason.clone().map_or(JsValue::NULL, JsValue::from));
        let _ = Reflect::set(&info, &"adapter".into(), &adapter.map_or(JsValue::NULL, JsValue::from));
        Ok(info)
    }

    /// The token ids of `text`. Options: `addSpecial` (put BOS first if the model wants it;
    /// default false), `parseSpecial` (recognise special-token texts such as `<|im_start|>`;
    /// default false).
    pub fn tokenize(&self, text: &str, options: Option<TokenizeOptions>) -> Result<Vec<u32>, JsValue> {
        let options = Options::new(options.map(JsCast::unchecked_into), &[&["addSpecial", "parseSpecial"]], "tokenize")?;
        let add_special = options.bool("addSpecial")?.unwrap_or(false);
        let parse_special = options.bool("parseSpecial")?.unwrap_or(false);
        self.model.tokenizer().encode(text, add_special, parse_special).map_err(js_error)
    }

    /// The text of token ids (special tokens written out).
    pub fn detokenize(&self, ids: Vec<u32>) -> Result<String, JsValue> {
        self.model.tokenizer().decode(&ids, true).map_err(js_error)
    }
}

/// A conversation that keeps its KV cache across turns (`model.chat(options)`).
#[wasm_bindgen]
pub struct ChatSession {
    session: Session,
    /// The chat's options: every turn's defaults.
    defaults: Object,
}

#[wasm_bindgen]
impl ChatSession {
    /// Sends `message` — a string (a user message), a message, or an array of messages (tool
    /// results, say; empty to let the assistant go on) — and streams the reply as `generate`
    /// does. The conversation is rendered whole, and only what the cache does not hold yet
    /// runs; `usage.cachedTokens` says how much it held. The reply joins the conversation when
    /// the turn completes. Options override the chat's for this turn. One turn at a time.
    #[wasm_bindgen(unchecked_return_type = "ReadableStream<Chunk>")]
    pub fn send(&mut self, #[wasm_bindgen(unchecked_param_type = "string | ChatMessage | ChatMessage[]")] message: JsValue, options: Option<JsTurnOptions>) -> Result<JsValue, JsValue> {
        let merged = Object::assign(&Object::new(), &self.defaults);
        let turn: Object = options.map(JsCast::unchecked_into).unwrap_or_default();
        Options::new(Some(turn.clone()), TURN_OPTIONS, "send")?;
        let merged = Object::assign(&merged, &turn);
        for key in ["system", "messages"] {
            let _ = Reflect::delete_property(&merged, &key.into());
        }
        let options = Options::new(Some(merged), TURN_OPTIONS, "send")?;
        let messages = if let Some(text) = message.as_string() {
            vec![Message::user(text)]
        } else if Array::is_array(&message) {
            messages_from_js(&message, "send")?
        } else {
            messages_from_js(&Array::of1(&message).into(), "send")?
        };
        let generator = self.session.generator(messages, options.generate_options()?).map_err(js_error)?;
        Ok(stream(generator, &options.get("signal")))
    }

    /// The conversation so far (an array of messages).
    #[wasm_bindgen(unchecked_return_type = "ChatMessage[]")]
    pub fn messages(&self) -> JsValue {
        to_js(&self.session.messages())
    }

    /// Positions the KV cache holds now.
    #[wasm_bindgen(getter, js_name = cachedTokens)]
    pub fn cached_tokens(&self) -> usize {
        self.session.cached_tokens()
    }

    /// A copy of the conversation and its cache, to continue apart.
    pub fn fork(&self) -> Result<ChatSession, JsValue> {
        Ok(ChatSession { session: self.session.fork().map_err(js_error)?, defaults: Object::assign(&Object::new(), &self.defaults) })
    }

    /// Keeps the first `messages` messages (to edit the last one, or answer again).
    pub fn truncate(&mut self, messages: usize) -> Result<(), JsValue> {
        self.session.truncate(messages).map_err(js_error)
    }

    /// The session as bytes (the conversation and its KV cache), for `model.restoreChat`.
    pub fn save(&self) -> Result<Vec<u8>, JsValue> {
        self.session.save().map_err(js_error)
    }
}

/// Messages from JS: `{ role, content }` objects, with `toolCalls`/`tool_calls` and
/// `toolCallId`/`tool_call_id`.
fn messages_from_js(value: &JsValue, what: &str) -> Result<Vec<Message>, JsValue> {
    if !Array::is_array(value) {
        return Err(type_error(&format!("{what}: the prompt must be a string or an array of {{ role, content }} messages")));
    }
    let json = js_sys::JSON::stringify(value)?.as_string().unwrap_or_default();
    serde_json::from_str(&json).map_err(|e| type_error(&format!("{what}: messages must be {{ role: \"system\" | \"user\" | \"assistant\" | \"tool\", content: string }} objects ({e})")))
}

/// A generation as a `ReadableStream` of chunk objects.
fn stream(generator: Generator, signal: &JsValue) -> JsValue {
    let generator: Rc<RefCell<Option<Generator>>> = Rc::new(RefCell::new(Some(generator)));
    let prefill = {
        let generator = generator.clone();
        Closure::<dyn FnMut() -> bool>::new(move || generator.borrow_mut().as_mut().is_some_and(|g| g.advance_prompt(PROMPT_BATCH)))
    };
    let next = {
        let generator = generator.clone();
        Closure::<dyn FnMut() -> JsValue>::new(move || {
            let chunk = generator.borrow_mut().as_mut().and_then(Generator::next_chunk);
            chunk.map_or(JsValue::UNDEFINED, |chunk| chunk_to_js(&chunk))
        })
    };
    let stop = Closure::<dyn FnMut()>::new(move || drop(generator.borrow_mut().take()));
    chunk_stream(&prefill.into_js_value().unchecked_into(), &next.into_js_value().unchecked_into(), &stop.into_js_value().unchecked_into(), signal)
}

/// A generation whose forward passes run on the GPU: the generator samples from the logits
/// read back.
#[cfg(feature = "webgpu")]
struct GpuRun {
    generator: Generator,
    weights: Rc<crate::arch::Weights<crate::gpu::Gpu>>,
    state: crate::arch::State<crate::gpu::Gpu>,
}

#[cfg(feature = "webgpu")]
impl GpuRun {
    /// The next chunk (`None` after the last): forward passes on the GPU, each one's logits
    /// awaited (the readback resolves from the event loop, which runs meanwhile), then sampled
    /// on the CPU as natively.
    async fn next_chunk(&mut self) -> Option<Chunk> {
        loop {
            if let Some(chunk) = self.generator.queued_chunk() {
                return Some(chunk);
            }
            if self.generator.is_finished() {
                return None;
            }
            let Some(input) = self.generator.next_input() else { continue };
            let logits = self.forward(&input).await;
            self.generator.take_device_logits(logits);
        }
    }

    /// Runs `input` (the prompt in batches) and reads the logits after its last token.
    async fn forward(&mut self, input: &[u32]) -> crate::error::Result<Vec<f32>> {
        let lost = |gpu: &crate::gpu::Gpu| gpu.lost().map(|why| Error::Gpu(format!("the device was lost ({why}); load the model again")));
        if let Some(e) = lost(self.weights.backend()) {
            return Err(e);
        }
        let mut logits = None;
        for batch in input.chunks(GPU_PROMPT_BATCH) {
            logits = Some(self.weights.forward_on_device(&mut self.state, batch, batch.len() - 1)?);
        }
        let logits = logits.ok_or_else(|| Error::Gpu("a forward pass with no tokens".into()))?;
        let read = self.weights.backend().read(&logits).await;
        // A readback that fails because the device went away says so.
        read.map_err(|e| lost(self.weights.backend()).unwrap_or(e))
    }
}

/// Prompt tokens in one GPU forward pass at most (bounds its activation buffers).
#[cfg(feature = "webgpu")]
const GPU_PROMPT_BATCH: usize = 64;

/// A GPU generation as a `ReadableStream` of chunk objects: each read awaits a promise of the
/// next chunk. Cancelling drops the generation, also while a readback is awaited.
#[cfg(feature = "webgpu")]
fn gpu_stream(run: GpuRun, signal: &JsValue) -> JsValue {
    // The run is taken out while a chunk is computed, so a `stop` meanwhile finds it empty and
    // marks it stopped; the chunk's future then drops it instead of putting it back.
    let slot: Rc<RefCell<(Option<GpuRun>, bool)>> = Rc::new(RefCell::new((Some(run), false)));
    let prefill = Closure::<dyn FnMut() -> bool>::new(|| false);
    let next = {
        let slot = slot.clone();
        Closure::<dyn FnMut() -> JsValue>::new(move || {
            let slot = slot.clone();
            wasm_bindgen_futures::future_to_promise(async move {
                let Some(mut run) = slot.borrow_mut().0.take() else { return Ok(JsValue::UNDEFINED) };
                let chunk = run.next_chunk().await;
                let mut slot = slot.borrow_mut();
                if !slot.1 && chunk.is_some() {
                    slot.0 = Some(run);
                }
                Ok(chunk.map_or(JsValue::UNDEFINED, |chunk| chunk_to_js(&chunk)))
            })
            .into()
        })
    };
    let stop = Closure::<dyn FnMut()>::new(move || {
        let mut slot = slot.borrow_mut();
        slot.1 = true;
        drop(slot.0.take());
    });
    chunk_stream(&prefill.into_js_value().unchecked_into(), &next.into_js_value().unchecked_into(), &stop.into_js_value().unchecked_into(), signal)
}

/// The model's weights placed on the browser's GPU, or why they cannot be: no WebGPU, no
/// adapter, a limit of the adapter too small for the model, or an architecture or format the
/// GPU does not run yet.
#[cfg(feature = "webgpu")]
async fn place_on_gpu(model: &model::Model, file: crate::bytes::Bytes) -> Result<Rc<crate::arch::Weights<crate::gpu::Gpu>>, String> {
    if !has_web_gpu() {
        return Err("navigator.gpu is undefined (this browser has no WebGPU, or the page is not a secure context: https or localhost)".into());
    }
    let gpu = crate::gpu::Gpu::new().await.map_err(|e| e.to_string())?;
    gpu_limits_fit(&gpu, model)?;
    let gguf = model.gguf();
    let weights = crate::arch::Weights::place(gpu, gguf, &[(file, gguf.data_offset)], &mut |_, _| {}).map_err(|e| e.to_string())?;
    Ok(Rc::new(weights))
}

/// Without the `webgpu` feature: the reason this build cannot use the GPU.
#[cfg(not(feature = "webgpu"))]
async fn place_on_gpu(_model: &model::Model, _file: crate::bytes::Bytes) -> Result<(), String> {
    Err("this build of candlewick has no GPU support (the threaded build is CPU-only; the single-thread build has WebGPU)".into())
}

/// Whether the adapter's limits fit the model: storage buffers per shader stage for the
/// busiest pipeline, a row of every matrix and a row of logits within one storage buffer
/// binding (matrices are split into parts of whole rows, so a whole tensor need not fit).
#[cfg(feature = "webgpu")]
fn gpu_limits_fit(gpu: &crate::gpu::Gpu, model: &model::Model) -> Result<(), String> {
    let limits = gpu.limits();
    let adapter = gpu.adapter_name();
    if limits.max_storage_buffers_per_shader_stage < crate::gpu::STORAGE_BUFFERS_PER_STAGE {
        return Err(format!(
            "{adapter} allows {} storage buffers per shader stage; the GPU path binds {}",
            limits.max_storage_buffers_per_shader_stage,
            crate::gpu::STORAGE_BUFFERS_PER_STAGE
        ));
    }
    let binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
    let too_small = |what: String, bytes: u64| format!("{adapter}'s largest storage buffer binding ({binding} bytes: maxStorageBufferBindingSize {}, maxBufferSize {}) is too small for {what} of {bytes} bytes", limits.max_storage_buffer_binding_size, limits.max_buffer_size);
    for t in &model.gguf().tensors {
        let Some((block_elems, block_bytes)) = crate::gguf::ggml_type_block(t.ggml_type) else { continue };
        let row = t.dims.first().copied().unwrap_or(0) / block_elems.max(1) * block_bytes;
        if row + 8 > binding {
            return Err(too_small(format!("a row of tensor `{}`", t.name), row));
        }
    }
    let logits = model.tokenizer().vocab_size() as u64 * 4;
    if logits > binding {
        return Err(too_small("a row of logits".into(), logits));
    }
    Ok(())
}

/// A chunk as JS sees it: camelCase names, and the values `toolCall` / `toolCalls`.
fn chunk_to_js(chunk: &Chunk) -> JsValue {
    let value = to_js(chunk);
    for (key, from, to) in [("type", "tool_call", "toolCall"), ("finishReason", "tool_calls", "toolCalls")] {
        if Reflect::get(&value, &key.into()).ok().and_then(|v| v.as_string()).as_deref() == Some(from) {
            let _ = Reflect::set(&value, &key.into(), &to.into());
        }
    }
    value
}

/// Prompt tokens run between two turns of the event loop: a fraction of a second in wasm.
const PROMPT_BATCH: usize = 16;

/// The options `generate`, `chat` and a chat's `send` share.
const COMMON_OPTIONS: &[&str] = &[
    "maxTokens",
    "temperature",
    "topK",
    "topP",
    "minP",
    "repeatPenalty",
    "frequencyPenalty",
    "presencePenalty",
    "penaltyLastN",
    "seed",
    "stop",
    "contextLength",
    "tools",
    "toolChoice",
    "grammar",
    "jsonSchema",
];

/// The options of `generate`.
const GENERATE_OPTIONS: &[&[&str]] = &[COMMON_OPTIONS, &["raw", "signal"]];

/// The options of `model.chat`: the conversation, and every turn's defaults.
const CHAT_OPTIONS: &[&[&str]] = &[COMMON_OPTIONS, &["system", "messages"]];

/// The options of one turn.
const TURN_OPTIONS: &[&[&str]] = &[COMMON_OPTIONS, &["signal"]];

/// A JS options object, checked for unknown keys.
struct Options {
    object: Object,
    what: &'static str,
}

impl Options {
    fn new(object: Option<Object>, known: &[&[&str]], what: &'static str) -> Result<Options, JsValue> {
        let object = object.unwrap_or_default();
        let known = known.concat();
        for key in Object::keys(&object) {
            let key = key.as_string().unwrap_or_default();
            if !known.contains(&key.as_str()) {
                return Err(type_error(&format!("{what}: unknown option `{key}` (known: {})", known.join(", "))));
            }
        }
        Ok(Options { object, what })
    }

    fn get(&self, key: &str) -> JsValue {
        Reflect::get(&self.object, &key.into()).unwrap_or(JsValue::UNDEFINED)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, JsValue> {
        match self.get(key) {
            v if v.is_undefined() => Ok(None),
            v => v.as_bool().map(Some).ok_or_else(|| type_error(&format!("{}: `{key}` must be a boolean", self.what))),
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>, JsValue> {
        match self.get(key) {
            v if v.is_undefined() => Ok(None),
            v => v.as_f64().map(Some).ok_or_else(|| type_error(&format!("{}: `{key}` must be a number", self.what))),
        }
    }

    /// A whole number in `0..=2^53`.
    fn count(&self, key: &str) -> Result<Option<u64>, JsValue> {
        match self.number(key)? {
            None => Ok(None),
            Some(n) if n.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&n) => Ok(Some(n as u64)),
            Some(n) => Err(range_error(&format!("{}: `{key}` must be a whole number ≥ 0, not {n}", self.what))),
        }
    }

    fn function(&self, key: &str) -> Result<Option<Function>, JsValue> {
        match self.get(key) {
            v if v.is_undefined() => Ok(None),
            v => v.dyn_into::<Function>().map(Some).map_err(|_| type_error(&format!("{}: `{key}` must be a function", self.what))),
        }
    }

    fn generate_options(&self) -> Result<GenerateOptions, JsValue> {
        let mut o = GenerateOptions::default();
        let s: &mut SamplingConfig = &mut o.sampling;
        let float = |key: &str| -> Result<Option<f32>, JsValue> { Ok(self.number(key)?.map(|n| n as f32)) };
        let size = |key: &str| -> Result<Option<usize>, JsValue> { Ok(self.count(key)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX))) };
        if let Some(v) = size("maxTokens")? {
            o.max_tokens = v;
        }
        if let Some(v) = float("temperature")? {
            s.temperature = v;
        }
        if let Some(v) = size("topK")? {
            s.top_k = v;
        }
        if let Some(v) = float("topP")? {
            s.top_p = v;
        }
        if let Some(v) = float("minP")? {
            s.min_p = v;
        }
        if let Some(v) = float("repeatPenalty")? {
            s.repeat_penalty = v;
        }
        if let Some(v) = float("frequencyPenalty")? {
            s.frequency_penalty = v;
        }
        if let Some(v) = float("presencePenalty")? {
            s.presence_penalty = v;
        }
        if let Some(v) = size("penaltyLastN")? {
            s.penalty_last_n = v;
        }
        if let Some(v) = self.count("seed")? {
            s.seed = v;
        }
        o.context_length = size("contextLength")?;
        let stop = self.get("stop");
        if let Some(text) = stop.as_string() {
            o.stop = vec![text];
        } else if Array::is_array(&stop) {
            o.stop = Array::from(&stop).iter().map(|v| v.as_string()).collect::<Option<_>>().ok_or_else(|| type_error("generate: `stop` must be a string or an array of strings"))?;
        } else if !stop.is_undefined() {
            return Err(type_error("generate: `stop` must be a string or an array of strings"));
        }
        let tools = self.get("tools");
        if !tools.is_undefined() {
            if !Array::is_array(&tools) {
                return Err(type_error(&format!("{}: `tools` must be an array of function definitions", self.what)));
            }
            let json = js_sys::JSON::stringify(&tools)?.as_string().unwrap_or_default();
            o.tools = crate::tools::parse_tools(&json).map_err(|e| type_error(&format!("{}: {e}", self.what)))?;
        }
        let choice = self.get("toolChoice");
        if let Some(text) = choice.as_string() {
            o.tool_choice = ToolChoice::parse(&text);
        } else if choice.is_object() {
            let name = Reflect::get(&choice, &"function".into()).and_then(|f| Reflect::get(&f, &"name".into())).ok().and_then(|n| n.as_string());
            o.tool_choice = ToolChoice::Function(name.ok_or_else(|| type_error(&format!("{}: `toolChoice` must be a string or {{ type: \"function\", function: {{ name }} }}", self.what)))?);
        } else if !choice.is_undefined() {
            return Err(type_error(&format!("{}: `toolChoice` must be a string or {{ type: \"function\", function: {{ name }} }}", self.what)));
        }
        let (grammar, schema) = (self.get("grammar"), self.get("jsonSchema"));
        if !grammar.is_undefined() && !schema.is_undefined() {
            return Err(type_error(&format!("{}: give `grammar` or `jsonSchema`, not both", self.what)));
        }
        if !grammar.is_undefined() {
            let text = grammar.as_string().ok_or_else(|| type_error(&format!("{}: `grammar` must be a string of GBNF", self.what)))?;
            o.grammar = Some(Grammar::parse(&text).map_err(js_error)?);
        } else if let Some(text) = schema.as_string() {
            o.grammar = Some(Grammar::from_json_schema_text(&text).map_err(js_error)?);
        } else if schema.is_object() {
            let text = js_sys::JSON::stringify(&schema).ok().and_then(|t| t.as_string()).ok_or_else(|| type_error(&format!("{}: `jsonSchema` cannot be turned into JSON", self.what)))?;
            o.grammar = Some(Grammar::from_json_schema_text(&text).map_err(js_error)?);
        } else if !schema.is_undefined() {
            return Err(type_error(&format!("{}: `jsonSchema` must be an object or a string of JSON", self.what)));
        }
        o.validate().map_err(js_error)?;
        Ok(o)
    }
}

/// `value` as a plain JS object, its field names in camelCase.
fn to_js(value: &impl Serialize) -> JsValue {
    fn camel(value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (camel_case(&k), camel(v))).collect()),
            Value::Array(items) => Value::Array(items.into_iter().map(camel).collect()),
            other => other,
        }
    }
    let json = serde_json::to_value(value).map(camel).and_then(|v| serde_json::to_string(&v));
    json.ok().and_then(|text| js_sys::JSON::parse(&text).ok()).unwrap_or(JsValue::NULL)
}

fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

fn object(fields: &[(&str, JsValue)]) -> Object {
    let object = Object::new();
    for (key, value) in fields {
        let _ = Reflect::set(&object, &(*key).into(), value);
    }
    object
}

/// A Rust error as a JS `Error` carrying its message.
fn js_error(e: Error) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

fn type_error(message: &str) -> JsValue {
    js_sys::TypeError::new(message).into()
}

fn range_error(message: &str) -> JsValue {
    js_sys::RangeError::new(message).into()
}

/// Starts the pool of `threads` Web Workers that the forward passes split their work over
/// (`initThreadPool(n)` in JavaScript; a promise). The threaded build only: call it once, in a
/// worker of a cross-origin isolated page, right after initialising the module and before
/// loading a model. `index.js` does this itself.
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// How many threads the forward passes run on: the pool's size in the threaded build.
fn threads() -> usize {
    #[cfg(feature = "threads")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "threads"))]
    1
}

/// Runs `work(index, chunk)` on each `chunk`-long piece of `data`: in parallel on the pool of
/// Web Workers in the threaded build, one after the other otherwise.
pub(crate) fn parallel_chunks<T: Send>(data: &mut [T], chunk: usize, work: impl Fn(usize, &mut [T]) + Sync + Send) {
    let chunk = chunk.max(1);
    // One piece, or a pool of one thread: on this thread (as natively).
    #[cfg(feature = "threads")]
    if data.len() > chunk && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        data.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| work(i, c));
        return;
    }
    data.chunks_mut(chunk).enumerate().for_each(|(i, c)| work(i, c));
}

/// Nothing to do: WebAssembly memory never shrinks.
pub(crate) fn return_freed_memory() {}

/// Unknown in the browser: a model is bounded by WebAssembly's memory instead
/// ([`check_model_size`]).
pub(crate) fn available_memory() -> Option<u64> {
    None
}

/// The largest model file wasm32 can hold: its 4 GiB memory, less room for the tokenizer, the
/// KV cache and the working buffers.
const MODEL_LIMIT: u64 = (4 << 30) - (512 << 20);

/// Refuses a model file of `bytes` that wasm32's memory cannot hold.
fn check_model_size(bytes: u64) -> Result<(), Error> {
    if bytes > MODEL_LIMIT {
        return Err(Error::ModelTooLarge {
            bytes,
            limit: MODEL_LIMIT,
            where_: "WebAssembly's 4 GiB memory (wasm32) can hold beside the model's working memory",
            hint: "; run it natively, where the file is memory-mapped",
        });
    }
    Ok(())
}

/// Runs `work` (a forward pass) on the pool, whatever number is asked: there is one pool, sized
/// when it was started. On a pool thread, the pass takes its own share of each product's tasks,
/// and the calling worker sleeps once per pass; run on the calling worker, the pass would hand
/// every product to the pool and sleep until it is done, hundreds of times a token. The
/// single-thread build runs `work` as it is.
pub(crate) fn with_threads<T: Send>(_threads: Option<usize>, work: impl FnOnce() -> T + Send) -> T {
    #[cfg(feature = "threads")]
    return rayon::scope(|_| work());
    #[cfg(not(feature = "threads"))]
    work()
}

/// The GPU's products against the CPU kernels on random blocks, and its other operations
/// against the CPU backend's ([`crate::gpu::check`]), on the browser's WebGPU: `{ adapter,
/// reports, operations }`, a report per format and per operation, or an error when there is
/// no WebGPU adapter. For `tests/browser/gpu.mjs`; in builds with the `webgpu` feature only.
#[cfg(feature = "webgpu")]
#[wasm_bindgen(js_name = gpuKernelCheck)]
pub async fn gpu_kernel_check() -> Result<JsValue, JsValue> {
    let gpu = crate::gpu::Gpu::new().await.map_err(js_error)?;
    let reports = crate::gpu::check::run(&gpu).await.map_err(js_error)?;
    let operations = crate::gpu::check::operations(&gpu).await.map_err(js_error)?;
    let result = Object::new();
    Reflect::set(&result, &"adapter".into(), &browser_adapter_name().await.into())?;
    Reflect::set(&result, &"reports".into(), &to_js(&reports))?;
    Reflect::set(&result, &"operations".into(), &to_js(&operations))?;
    Ok(result.into())
}

/// Greedy continuations of `prompts` on the browser's GPU and on the CPU, from the GGUF file
/// `bytes`: `{ adapter, results: [{ prompt, cpu, gpu, divergence }] }`, `cpu` and `gpu` the
/// `tokens` ids each picked, `divergence` (at the first difference) `{ at, cpuToken,
/// gpuToken, cpuLogit, gpuTokenCpuLogit }`, the two tokens' logits on the CPU. For
/// `tests/browser/gpu-forward.mjs`; in builds with the `webgpu` feature only.
#[cfg(feature = "webgpu")]
#[wasm_bindgen(js_name = gpuGreedyCheck)]
pub async fn gpu_greedy_check(bytes: Vec<u8>, prompts: Vec<String>, tokens: usize) -> Result<JsValue, JsValue> {
    use crate::arch::Weights;
    use crate::gguf::Gguf;
    let file = crate::bytes::Bytes::from(bytes);
    let gguf = Gguf::read(&mut std::io::Cursor::new(&file[..])).map_err(js_error)?;
    let cpu_model = model::Model::from_bytes(file.to_vec()).map_err(js_error)?;
    let cpu = cpu_model.weights().map_err(js_error)?;
    let gpu = crate::gpu::Gpu::new().await.map_err(js_error)?;
    let adapter = browser_adapter_name().await;
    let gpu = Weights::place(gpu, &gguf, &[(file.clone(), gguf.data_offset)], &mut |_, _| {}).map_err(js_error)?;
    let argmax = |logits: &[f32]| logits.iter().enumerate().fold(0, |best, (i, &v)| if v > logits[best] { i } else { best }) as u32;
    let results = Array::new();
    for prompt in prompts {
        let ids = cpu_model.tokenizer().encode(&prompt, true, false).map_err(js_error)?;
        let capacity = ids.len() + tokens + 1;
        let (mut cpu_state, mut gpu_state) = (cpu.new_state(capacity).map_err(js_error)?, gpu.new_state(capacity).map_err(js_error)?);
        let (mut cpu_tokens, mut gpu_tokens, mut cpu_logits) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cpu_input, mut gpu_input) = (ids.clone(), ids);
        // Seconds on each device: the first pass (the prompt) and the others (a token each).
        let (mut cpu_seconds, mut gpu_seconds) = ([0f64; 2], [0f64; 2]);
        for step in 0..tokens {
            let started = js_sys::Date::now();
            let c = cpu.forward(&mut cpu_state, &cpu_input).map_err(js_error)?;
            let between = js_sys::Date::now();
            let on_device = gpu.forward_on_device(&mut gpu_state, &gpu_input, gpu_input.len() - 1).map_err(js_error)?;
            let g = gpu.backend().read(&on_device).await.map_err(js_error)?;
            cpu_seconds[usize::from(step > 0)] += (between - started) / 1000.0;
            gpu_seconds[usize::from(step > 0)] += (js_sys::Date::now() - between) / 1000.0;
            let (ct, gt) = (argmax(&c), argmax(&g));
            cpu_tokens.push(ct);
            gpu_tokens.push(gt);
            cpu_logits.push(c);
            (cpu_input, gpu_input) = (vec![ct], vec![gt]);
        }
        let result = Object::new();
        Reflect::set(&result, &"prompt".into(), &prompt.into())?;
        Reflect::set(&result, &"cpu".into(), &to_js(&cpu_tokens))?;
        Reflect::set(&result, &"gpu".into(), &to_js(&gpu_tokens))?;
        Reflect::set(&result, &"cpuSeconds".into(), &to_js(&cpu_seconds))?;
        Reflect::set(&result, &"gpuSeconds".into(), &to_js(&gpu_seconds))?;
        if let Some(at) = cpu_tokens.iter().zip(&gpu_tokens).position(|(a, b)| a != b) {
            let logits = &cpu_logits[at];
            let (ct, gt) = (cpu_tokens[at], gpu_tokens[at]);
            let divergence = object(&[
                ("at", (at as f64).into()),
                ("cpuToken", ct.into()),
                ("gpuToken", gt.into()),
                ("cpuLogit", logits[ct as usize].into()),
                ("gpuTokenCpuLogit", logits[gt as usize].into()),
            ]);
            Reflect::set(&result, &"divergence".into(), &divergence)?;
        }
        results.push(&result);
    }
    let out = Object::new();
    Reflect::set(&out, &"adapter".into(), &adapter.into())?;
    Reflect::set(&out, &"results".into(), &results)?;
    Ok(out.into())
}
