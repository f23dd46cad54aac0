// How far llama.cpp (node-llama-cpp 3.21.1) is from itself: the same chunks of a text scored
// twice, once 16 positions per decode and once one position per decode (the path generation
// takes), and the KL divergence between the two runs, computed as `candlewick perplexity`
// computes it (KL(first ‖ second) over the first run's top 32, the rest of the mass as one
// outcome) with the same top token counted. This is the floor under any comparison of another
// engine with llama.cpp (BENCHMARKS.md, "Perplexity and KL divergence").
// usage: node self-divergence.mjs MODEL.gguf TEXT [CONTEXT=512] [THREADS=2]
import { getLlama } from "node-llama-cpp";
import { readFileSync } from "node:fs";
import { scoreChunks } from "./score.mjs";

const [modelPath, textPath, contextArg = "512", threadsArg = "2"] = process.argv.slice(2);
if (!modelPath || !textPath) throw new Error("usage: node self-divergence.mjs MODEL.gguf TEXT [CONTEXT] [THREADS]");
const contextSize = Number(contextArg);
const threads = Number(threadsArg);
const TOP_K = 32;

const llama = await getLlama({ gpu: false, build: "never", logLevel: "error", maxThreads: threads });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const tokens = model.tokenize(readFileSync(textPath, "utf8"));
const bos = model.tokens.bos;
const chunks = [];
for (let start = 0; start + contextSize <= tokens.length; start += contextSize) {
    const chunk = tokens.slice(start, start + contextSize);
    if (model.tokens.shouldPrependBosToken && bos != null) chunk[0] = bos;
    chunks.push(chunk);
}
if (chunks.length === 0) throw new Error(`the text is ${tokens.length} tokens, shorter than one chunk of ${contextSize}`);
const first = contextSize / 2;
const context = await model.createContext({ contextSize, batchSize: contextSize, sequences: 1, threads });
const sequence = context.getSequence();

// Calls `visit(position, probabilities)` for every scored position of every chunk.
async function score(atOnce, visit) {
    let position = 0;
    await scoreChunks(sequence, chunks, first, atOnce, (_chunk, _j, probabilities) => visit(position++, probabilities));
}

const base = [];
await score(16, (_, probabilities) => {
    const top = [];
    for (const [id, p] of probabilities) {
        if (top.length >= TOP_K) break;
        top.push([id, Math.log(p)]);
    }
    base.push(top);
});
const klds = [];
let sameTop = 0;
// The largest move of a likely token's log-probability between the two runs (over the first
// run's top 5), and the position where it happened.
let shift = { nats: 0, position: -1 };
await score(1, (i, probabilities) => {
    let kld = 0, pIn = 0, qIn = 0;
    for (const [id, lp] of base[i]) {
        const q = probabilities.get(id) ?? 0;
        const lq = q > 0 ? Math.log(q) : -Infinity;
        kld += Math.exp(lp) * (lp - lq);
        pIn += Math.exp(lp);
        qIn += q;
    }
    const pRest = Math.max(1 - pIn, 0), qRest = Math.max(1 - qIn, Number.MIN_VALUE);
    if (pRest > 1e-12) kld += pRest * (Math.log(pRest) - Math.log(qRest));
    klds.push(Math.max(kld, 0));
    for (const [id, lp] of base[i].slice(0, 5)) {
        const q = probabilities.get(id) ?? 0;
        const moved = q > 0 ? Math.abs(Math.log(q) - lp) : Infinity;
        if (moved > shift.nats) shift = { nats: moved, position: i };
    }
    if (probabilities.keys().next().value === base[i][0][0]) sameTop++;
});
const mean = klds.reduce((a, b) => a + b, 0) / klds.length;
const sd = Math.sqrt(klds.reduce((a, b) => a + (b - mean) ** 2, 0) / klds.length / Math.max(klds.length - 1, 1));
const sorted = [...klds].sort((a, b) => a - b);
console.log(JSON.stringify({
    model: modelPath.split("/").pop(),
    positions: klds.length,
    meanKld: mean,
    meanKldError: sd,
    p99Kld: sorted[Math.min(sorted.length - 1, Math.floor(0.99 * sorted.length))],
    maxKld: sorted[sorted.length - 1],
    sameTop: sameTop / klds.length,
    largestTop5Shift: shift,
}));
await context.dispose();
await model.dispose();
await llama.dispose();
