// Extremes and edge cases of the npm package in Node.js 20 (tests/web.rs has the same through
// wasm-bindgen-test): maxTokens far beyond the context, a context length of 2^32, no messages,
// a conversation that ends with the assistant, a model used after free().
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { before, test } from "node:test";

import { Model, iterate } from "../../pkg/node.js";

const path = join(process.env.CANDLEWICK_CACHE || join(homedir(), ".cache", "candlewick"), "models", "SmolLM2-135M-Instruct.Q4_1.gguf");
let bytes;
before(async () => {
    bytes = await readFile(path);
});

/** The last chunk of a generation. */
async function last(stream) {
    let chunk;
    for await (chunk of iterate(stream));
    return chunk;
}

/** SmolLM2's bytes with the u32 metadata entry `key` set to `value`. */
function withMetadata(key, value) {
    const file = Buffer.from(bytes);
    const name = Buffer.from(key);
    const needle = Buffer.concat([Buffer.alloc(8), name]);
    needle.writeBigUInt64LE(BigInt(name.length));
    const at = file.indexOf(needle) + needle.length;
    assert.equal(file.readUInt32LE(at), 4, `${key} is a u32`);
    file.writeUInt32LE(value, at + 4);
    return file;
}

test("maxTokens 1e12 and 2^53 - 1 generate to the end of the context", async () => {
    const model = await Model.load(withMetadata("llama.context_length", 40));
    try {
        for (const maxTokens of [1e12, Number.MAX_SAFE_INTEGER]) {
            const done = await last(model.generate("One, two, three, four,", { maxTokens, temperature: 0, raw: true }));
            assert.equal(done.type, "complete", JSON.stringify(done));
            assert.equal(done.finishReason, "length");
            // The last token comes from the logits at position 40 and is never fed back.
            assert.equal(done.usage.promptTokens + done.usage.completionTokens, 41);
        }
        // The request of issue 14, as a chat; it ends at the context's end or where the model stops.
        const done = await last(model.generate("hi", { maxTokens: 1e12 }));
        assert.equal(done.type, "complete", JSON.stringify(done));
        assert.ok(done.usage.completionTokens > 0);
    } finally {
        model.free();
    }
});

test("a context length of 2^32 and an empty conversation are refused in words", async () => {
    const model = await Model.load(bytes);
    try {
        assert.throws(() => model.generate("hi", { contextLength: 2 ** 32 }), /beyond the model's context length 8192/);
        assert.throws(() => model.generate([]), /no messages/);
        const done = await last(
            model.generate(
                [
                    { role: "user", content: "Hi" },
                    { role: "assistant", content: "Hello! Half an" },
                ],
                { maxTokens: 8, temperature: 0 },
            ),
        );
        assert.equal(done.type, "complete");
        assert.ok(done.usage.completionTokens > 0);
    } finally {
        model.free();
    }
});

test("a freed model says it was freed", async () => {
    const model = await Model.load(bytes);
    model.free();
    assert.throws(() => model.generate("hi"), /model\.generate\(\): the model was freed/);
    assert.throws(() => model.info(), /model\.info\(\): the model was freed/);
    assert.throws(() => model.tokenize("hi"), /the model was freed/);
    assert.throws(() => model.detokenize([1]), /the model was freed/);
});
