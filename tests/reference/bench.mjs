// llama.cpp's speed on one model, for the side-by-side benchmark (benches/compare.rs).
// usage: node bench.mjs MODEL.gguf THREADS < {"prompt": [ids], "decode": 64}
// prints: {"prefill_tokens_per_second", "decode_tokens_per_second", "peak_rss_mib"}
import { getLlama } from "node-llama-cpp";
import { readFileSync } from "node:fs";

const [modelPath, threadsArg] = process.argv.slice(2);
const threads = Number(threadsArg);
const { prompt, decode } = JSON.parse(readFileSync(0, "utf8"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error", maxThreads: threads });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const context = await model.createContext({ contextSize: prompt.length + decode + 16, sequences: 1, threads, batchSize: 512 });
const sequence = context.getSequence();

// Prefill: the prompt in one batch, up to the first sampled token.
let start = performance.now();
const first = sequence.evaluate(prompt, { temperature: 0 });
const { value: token } = await first.next();
await first.return();
const prefillSeconds = (performance.now() - start) / 1000;

// Decode: one token at a time, greedily, ignoring end-of-generation so the count is fixed.
start = performance.now();
let produced = 0;
const rest = sequence.evaluate([token], { temperature: 0, yieldEogToken: true });
for await (const _ of rest) {
    if (++produced >= decode) break;
}
await rest.return();
const decodeSeconds = (performance.now() - start) / 1000;

process.stdout.write(JSON.stringify({
    prefill_tokens_per_second: prompt.length / prefillSeconds,
    decode_tokens_per_second: produced / decodeSeconds,
    peak_rss_mib: process.resourceUsage().maxRSS / 1024,
}) + "\n");
await sequence.dispose();
await context.dispose();
await model.dispose();
await llama.dispose();
