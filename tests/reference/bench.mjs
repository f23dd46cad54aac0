// llama.cpp's speed on one model, for the side-by-side benchmarks (benches/compare.rs,
// benches/scale.rs): load time, first token, prefill and decode speed, peak RSS.
// usage: node bench.mjs MODEL.gguf THREADS < {"prompt": [ids], "decode": N}
// `decode`: tokens generated one at a time after the first sampled token.
// prints: {"load_ms", "first_token_ms", "prompt_tokens", "completion_tokens",
//          "prefill_tokens_per_second", "decode_tokens_per_second", "peak_rss_mib"},
//         or {"error": message} if llama.cpp fails.
import { getLlama } from "node-llama-cpp";
import { readFileSync } from "node:fs";

const [modelPath, threadsArg] = process.argv.slice(2);
const threads = Number(threadsArg);
const { prompt, decode } = JSON.parse(readFileSync(0, "utf8"));
try {
    const llama = await getLlama({ gpu: false, build: "never", logLevel: "error", maxThreads: threads });
    const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
    const context = await model.createContext({ contextSize: prompt.length + decode + 16, sequences: 1, threads, batchSize: 512 });
    const sequence = context.getSequence();
    // performance.now() counts from the start of the process: loading includes Node's start,
    // as candlewick's includes its process's.
    const loaded = performance.now();

    // Prefill: the prompt in one batch, up to the first sampled token.
    let start = performance.now();
    const first = sequence.evaluate(prompt, { temperature: 0 });
    const { value: token } = await first.next();
    await first.return();
    const prefillSeconds = (performance.now() - start) / 1000;
    const firstToken = performance.now();

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
        load_ms: loaded,
        first_token_ms: firstToken,
        prompt_tokens: prompt.length,
        completion_tokens: produced + 1,
        prefill_tokens_per_second: prompt.length / prefillSeconds,
        decode_tokens_per_second: produced / decodeSeconds,
        peak_rss_mib: process.resourceUsage().maxRSS / 1024,
    }) + "\n");
    await sequence.dispose();
    await context.dispose();
    await model.dispose();
    await llama.dispose();
} catch (e) {
    process.stdout.write(JSON.stringify({ error: String(e?.message ?? e).split("\n")[0] }) + "\n");
}
