// The npm package's JavaScript API in Node.js 20, on a real model: every kind of source,
// progress, AbortSignal on load and on generate, messages, stop strings, tokenize, and the
// README's example. Run with `node --test tests/node/` after `make pkg` and `make models`.
import assert from "node:assert/strict";
import { access, readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Model, iterate } from "../../pkg/node.js";
import { serve } from "../../www/serve.mjs";

const FILE = "SmolLM2-135M-Instruct.Q4_1.gguf";
const path = join(process.env.CANDLEWICK_CACHE || join(homedir(), ".cache", "candlewick"), "models", FILE);
let bytes;
let server;
let model;

before(async () => {
    await access(path).catch(() => assert.fail(`${path} is missing: run \`make models\``));
    bytes = await readFile(path);
    server = await serve({ port: 0 });
    model = await Model.load(bytes);
});

after(async () => {
    model?.free();
    await server?.close();
});

/** Every chunk of a generation. */
async function collect(stream) {
    const chunks = [];
    for await (const chunk of iterate(stream)) chunks.push(chunk);
    return chunks;
}

test("a URL is fetched with download then load progress, in bytes, never going back", async () => {
    const events = [];
    const fetched = await Model.load(`${server.url}models/${FILE}`, { onProgress: (p) => events.push(p) });
    try {
        assert.deepEqual([...new Set(events.map((e) => e.phase))], ["download", "load"]);
        for (const phase of ["download", "load"]) {
            const ours = events.filter((e) => e.phase === phase);
            assert.ok(ours.every((e, i) => i === 0 || e.loaded >= ours[i - 1].loaded), `${phase} progress goes back`);
            assert.equal(ours.at(-1).loaded, bytes.length);
            assert.equal(ours.at(-1).total, bytes.length);
        }
        assert.ok(events.filter((e) => e.phase === "download").length > 10, "download progress arrives as the bytes do");
        assert.deepEqual(fetched.tokenize("Hello world"), model.tokenize("Hello world"));
    } finally {
        fetched.free();
    }
});

test("a missing URL rejects with the HTTP status", async () => {
    await assert.rejects(Model.load(`${server.url}models/no-such-model.gguf`), /HTTP 404/);
});

test("ArrayBuffer and Blob sources load the same model", async () => {
    const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    for (const source of [buffer, new Blob([bytes])]) {
        const other = await Model.load(source);
        assert.deepEqual(other.info(), model.info());
        other.free();
    }
});

test("aborting a load rejects with an AbortError", async () => {
    const controller = new AbortController();
    const loading = Model.load(`${server.url}models/${FILE}`, {
        signal: controller.signal,
        onProgress: ({ phase, loaded }) => phase === "download" && loaded > 1e6 && controller.abort(),
    });
    await assert.rejects(loading, (e) => e instanceof DOMException && e.name === "AbortError");
    const already = AbortSignal.abort();
    await assert.rejects(Model.load(bytes, { signal: already }), { name: "AbortError" });
});

test("a chat streams text chunks, then one complete chunk whose text they add up to", async () => {
    const messages = [
        { role: "system", content: "You are a helpful assistant." },
        { role: "user", content: "Name a colour." },
    ];
    const chunks = await collect(model.generate(messages, { maxTokens: 16, temperature: 0 }));
    const last = chunks.at(-1);
    assert.equal(last.type, "complete");
    assert.ok(chunks.slice(0, -1).every((c) => c.type === "text"));
    assert.equal(chunks.slice(0, -1).map((c) => c.text).join(""), last.text);
    assert.ok(["stop", "length"].includes(last.finishReason));
    for (const key of ["promptTokens", "completionTokens", "timeToFirstTokenMs", "prefillTokensPerSecond", "decodeTokensPerSecond"]) {
        assert.equal(typeof last.usage[key], "number", key);
    }
});

test("a stop string ends the text before it", async () => {
    const full = (await collect(model.generate("1, 2, 3, 4, 5,", { raw: true, maxTokens: 16, temperature: 0 }))).at(-1);
    const at = full.text.indexOf("8");
    assert.ok(at > 0, `the continuation counts on: ${JSON.stringify(full.text)}`);
    const stopped = (await collect(model.generate("1, 2, 3, 4, 5,", { raw: true, maxTokens: 16, temperature: 0, stop: ["8"] }))).at(-1);
    assert.equal(stopped.finishReason, "stop");
    assert.equal(stopped.stop, "8");
    assert.equal(stopped.text, full.text.slice(0, at));
});

test("aborting a generation errors the stream with an AbortError before the next token", async () => {
    const controller = new AbortController();
    const reader = model.generate("Write a long story about a lighthouse keeper.", { maxTokens: 200, signal: controller.signal }).getReader();
    assert.equal((await reader.read()).value.type, "text");
    controller.abort();
    await assert.rejects(reader.read(), { name: "AbortError" });
});

test("a seeded sample is reproducible", async () => {
    const options = { maxTokens: 12, temperature: 0.9, seed: 7 };
    const a = (await collect(model.generate("Tell me a joke.", options))).at(-1).text;
    const b = (await collect(model.generate("Tell me a joke.", options))).at(-1).text;
    assert.equal(a, b);
});

test("tokenize and detokenize round-trip, with and without special tokens", () => {
    const text = "<|im_start|>user\nHello, world<|im_end|>";
    const plain = model.tokenize(text);
    const special = model.tokenize(text, { parseSpecial: true });
    assert.ok(plain instanceof Uint32Array);
    assert.ok(special.length < plain.length);
    assert.equal(model.detokenize(special), text);
    assert.equal(model.detokenize(plain), text);
});

test("bad arguments throw TypeError or RangeError with the reason", () => {
    assert.throws(() => model.generate(42), TypeError);
    assert.throws(() => model.generate("Hi", { maxTokens: 1.5 }), RangeError);
    assert.throws(() => model.generate("Hi", { stop: [1] }), /stop/);
    assert.throws(() => model.generate([{ role: "robot", content: "x" }]), /role/);
    assert.throws(() => model.generate("Hi", { temperature: -1 }), /temperature/);
});

test("the README's example runs", async () => {
    const readme = await readFile(new URL("../../README.md", import.meta.url), "utf8");
    const example = readme.match(/<!-- node example -->\s*```js\n([\s\S]*?)```/)?.[1];
    assert.ok(example, "README.md has a ```js block after <!-- node example -->");
    const source = example
        .replace(/from "candlewick"/g, `from ${JSON.stringify(new URL("../../pkg/node.js", import.meta.url).href)}`)
        .replace(/https?:\/\/[^"']*\.gguf/g, `${server.url}models/${FILE}`);
    const written = [];
    const write = process.stdout.write;
    process.stdout.write = (s) => written.push(String(s)) > 0;
    try {
        await import(`data:text/javascript,${encodeURIComponent(source)}`);
    } finally {
        process.stdout.write = write;
    }
    assert.ok(written.join("").trim().length > 0, "the example wrote the model's answer");
});

test("an abort while a long prompt is read stops it between prompt batches", async () => {
    const controller = new AbortController();
    const prompt = "The lighthouse keeper climbed the stairs every night. ".repeat(30);
    const reader = model.generate(prompt, { raw: true, maxTokens: 8, signal: controller.signal }).getReader();
    const read = reader.read();
    setTimeout(() => controller.abort(), 0);
    // Read whole, the prompt would run to its end and a text chunk would arrive first.
    await assert.rejects(read, { name: "AbortError" });
});

test("device: cpu by default; auto falls back with a reason where there is no WebGPU; gpu rejects; anything else is a TypeError", async () => {
    const info = model.info();
    assert.equal(info.device, "cpu");
    assert.equal(info.deviceReason, null);
    assert.equal(info.adapter, null);
    // Node.js has no navigator.gpu.
    const auto = await Model.load(bytes, { device: "auto" });
    try {
        assert.equal(auto.info().device, "cpu");
        assert.match(auto.info().deviceReason, /navigator\.gpu is undefined/);
        const chunks = await collect(auto.generate("Hi", { maxTokens: 2, temperature: 0 }));
        assert.equal(chunks.at(-1).type, "complete");
    } finally {
        auto.free();
    }
    await assert.rejects(Model.load(bytes, { device: "gpu" }), /the GPU cannot run this model: navigator\.gpu is undefined/);
    await assert.rejects(Model.load(bytes, { device: "webgl" }), { name: "TypeError", message: /`device` must be "auto", "gpu" or "cpu", not "webgl"/ });
    await assert.rejects(Model.load(bytes, { device: 1 }), { name: "TypeError" });
});
