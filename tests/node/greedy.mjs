// Greedy generations through the npm package (pkg/) in Node.js, for tests/wasm_parity.rs.
// stdin: { model: path, maxTokens, prompts: [{ text, raw, grammar?, jsonSchema? }] }; stdout: [{ text, completionTokens, finishReason }].
import { readFile } from "node:fs/promises";
import { text } from "node:stream/consumers";
import { Model, iterate } from "../../pkg/node.js";

const { model: path, maxTokens, prompts } = JSON.parse(await text(process.stdin));
const model = await Model.load(await readFile(path));
const results = [];
for (const { text: prompt, raw, ...constraint } of prompts) {
    for await (const chunk of iterate(model.generate(prompt, { maxTokens, temperature: 0, raw, ...constraint }))) {
        if (chunk.type === "error") throw new Error(chunk.message);
        if (chunk.type === "complete") {
            results.push({ text: chunk.text, completionTokens: chunk.usage.completionTokens, finishReason: chunk.finishReason });
        }
    }
}
model.free();
console.log(JSON.stringify(results));
