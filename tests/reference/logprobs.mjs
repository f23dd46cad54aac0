// Reference next-token log-probabilities by llama.cpp (node-llama-cpp 3.21.1), for
// perplexity and KL divergence (tests/perplexity.rs).
// usage: node logprobs.mjs MODEL.gguf < request.json
//   request:  {"chunks": [[ids], ...],   // each evaluated from an empty sequence, as given
//              "first": 256,             // positions first .. len-2 of each chunk are scored
//              "topK": 32,
//              "batchSize": 512,         // optional, default the chunk's length: tokens per
//                                        // llama_decode
//              "scoredAtOnce": 16,       // optional, default 16: scored positions evaluated per
//                                        // call (1 runs each as generation runs a token)
//              "threads": 1}             // optional, default 1
//   response: {"positions": [{"logprob": lp, "top": [[id, lp], ...]}, ...]}
//             per scored position in order: the log-probability of the token that follows it in
//             the chunk, and the topK most likely tokens, most likely first.
//
// node-llama-cpp gives softmax(logits) over the whole vocabulary (float32, from the raw logits:
// with temperature 0 its sampler chain is a single greedy sampler that leaves them alone);
// log(p) is taken here. A probability that underflowed to 0 comes back as null.
import { getLlama } from "node-llama-cpp";
import { readFileSync } from "node:fs";
import { scoreChunks } from "./score.mjs";

const modelPath = process.argv[2];
const { chunks, first, topK, batchSize, scoredAtOnce = 16, threads = 1 } = JSON.parse(readFileSync(0, "utf8"));
if (!Array.isArray(chunks) || chunks.length === 0) throw new Error("request.chunks must be a non-empty array of token id arrays");
const contextSize = Math.max(...chunks.map((c) => c.length));
if (!(Number.isInteger(first) && first >= 1 && first < contextSize - 1)) throw new Error("request.first must be in 1..len-2");

const llama = await getLlama({ gpu: false, build: "never", logLevel: "error", maxThreads: threads });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const context = await model.createContext({ contextSize, batchSize: batchSize ?? contextSize, sequences: 1, threads });
const sequence = context.getSequence();
const log = (p) => (p > 0 ? Math.log(p) : null);

const positions = [];
try {
    await scoreChunks(sequence, chunks, first, scoredAtOnce, (chunk, j, probabilities) => {
        const top = [];
        for (const [id, p] of probabilities) { // highest first
            if (top.length >= topK) break;
            top.push([id, log(p)]);
        }
        positions.push({ logprob: log(probabilities.get(chunk[j + 1]) ?? 0), top });
    });
    process.stdout.write(JSON.stringify({ positions }) + "\n");
} finally {
    await context.dispose();
    await model.dispose();
    await llama.dispose();
}
