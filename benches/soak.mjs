// Soak in Node.js on the npm package (pkg/, `make pkg`): 1,000 generations of mixed kinds on
// SmolLM2, printing resident memory and the WebAssembly memory at the start, after the first
// 20 generations and at the end (benches/soak.rs is the same natively). `make soak` runs both.
//
// Kinds, in turn: greedy to the end, a stream cancelled after three chunks, a generation whose
// AbortSignal fires before its first token, seeded sampling, a chat of four messages. The end
// must be within 16 MiB of the memory after 20 generations.
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";

import { Model, iterate } from "../pkg/node.js";

const GENERATIONS = 1000;
const MIB = 1024 * 1024;
const dir = process.env.CANDLEWICK_MODELS || join(process.env.CANDLEWICK_CACHE || join(homedir(), ".cache", "candlewick"), "models");
const model = await Model.load(await readFile(join(dir, "SmolLM2-135M-Instruct.Q4_1.gguf")));

const memory = () => process.memoryUsage().rss;
const show = (label, bytes) => console.log(`${label.padEnd(28)}${(bytes / MIB).toFixed(1).padStart(8)} MiB`);

/** Reads a stream to its end, or cancels it after `keep` chunks; returns the text chunks read. */
async function run(stream, keep = Infinity) {
    let read = 0;
    for await (const chunk of iterate(stream)) {
        if (chunk.type === "error") throw new Error(chunk.message);
        if (chunk.type === "text") read += 1;
        if (read === keep) break; // leaving the loop cancels the stream
    }
    return read;
}

console.log(`soak (Node.js, wasm): ${GENERATIONS} generations`);
show("memory at start:", memory());
let afterTwenty = 0;
let chunks = 0;
const short = { maxTokens: 12, temperature: 0 };
for (let i = 0; i < GENERATIONS; i++) {
    switch (i % 5) {
        case 0:
            chunks += await run(model.generate(`Item ${i}: the`, { ...short, raw: true }));
            break;
        case 1:
            chunks += await run(model.generate(`Tell me a long story number ${i}.`, { ...short, maxTokens: 200 }), 3);
            break;
        case 2: {
            const controller = new AbortController();
            const stream = model.generate(`Aborted ${i}`, { ...short, raw: true, signal: controller.signal });
            controller.abort();
            await run(stream).catch((e) => {
                if (e.name !== "AbortError") throw e;
            });
            break;
        }
        case 3:
            chunks += await run(model.generate("Once upon a time", { maxTokens: 12, seed: i, raw: true }));
            break;
        default: {
            const messages = [
                { role: "system", content: "Be brief." },
                { role: "user", content: "Hi!" },
                { role: "assistant", content: "Hello." },
                { role: "user", content: `What is ${i} + 1?` },
            ];
            chunks += await run(model.generate(messages, short));
        }
    }
    if (i + 1 === 20) {
        afterTwenty = memory();
        show("memory after 20:", afterTwenty);
    }
}
const end = memory();
show("memory at end:", end);
console.log(`${chunks} text chunks read`);
const growth = end - afterTwenty;
show("end − after 20:", growth);
console.log(growth <= 16 * MIB ? "within 16 MiB" : "MORE THAN 16 MiB");
model.free();
