// Tool calls and chat sessions in the npm package, in Node.js 20, on real models: Qwen2.5-Coder
// calls a tool given through its template, and a chat session's turns reuse its KV cache and
// write what a cold generation of the same conversation writes. Run with
// `node --test tests/node/` after `make pkg` and `make models`.
import assert from "node:assert/strict";
import { access, readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Model, iterate } from "../../pkg/node.js";

const models = join(process.env.CANDLEWICK_CACHE || join(homedir(), ".cache", "candlewick"), "models");
let qwen;
let smollm;

async function load(file) {
    const path = join(models, file);
    await access(path).catch(() => assert.fail(`${path} is missing: run \`make models\``));
    return Model.load(await readFile(path));
}

before(async () => {
    qwen = await load("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    smollm = await load("SmolLM2-135M-Instruct.Q4_1.gguf");
});

after(() => {
    qwen?.free();
    smollm?.free();
});

async function collect(stream) {
    const chunks = [];
    for await (const chunk of iterate(stream)) chunks.push(chunk);
    return chunks;
}

const tools = [
    {
        type: "function",
        function: {
            name: "get_weather",
            description: "Get the current weather in a city",
            parameters: { type: "object", properties: { city: { type: "string", description: "The city name" } }, required: ["city"] },
        },
    },
];
const ask = "What is the weather in Paris? Use the get_weather tool.";

test("Qwen2.5-Coder calls a tool: a toolCall chunk with JSON arguments, finishReason toolCalls", async () => {
    const chunks = await collect(qwen.generate(ask, { tools, temperature: 0, maxTokens: 64 }));
    const calls = chunks.filter((c) => c.type === "toolCall");
    assert.equal(calls.length, 1, JSON.stringify(chunks));
    assert.equal(calls[0].name, "get_weather");
    assert.equal(calls[0].id, "call_0");
    const args = JSON.parse(calls[0].arguments);
    assert.match(args.city, /Paris/);
    const complete = chunks.at(-1);
    assert.equal(complete.type, "complete");
    assert.equal(complete.finishReason, "toolCalls");
    for (const c of chunks.filter((c) => c.type === "text")) assert.doesNotMatch(c.text, /"arguments"|<tool_call>/);

    // A named or required choice needs grammars: a clear error.
    assert.throws(() => qwen.generate(ask, { tools, toolChoice: "required" }), /needs grammar support/);
    assert.throws(() => qwen.generate(ask, { tools, toolChoice: { type: "function", function: { name: "get_weather" } } }), /needs grammar support/);
    assert.throws(() => qwen.generate(ask, { tools: [{ name: "no spaces allowed" }] }), /invalid tools/);
    assert.throws(() => qwen.generate(ask, { tools: "get_weather" }), TypeError);
});

test("a tool result goes back through the template in a chat session", async () => {
    const chat = qwen.chat({ tools, temperature: 0, maxTokens: 48 });
    try {
        const first = await collect(chat.send(ask));
        const call = first.find((c) => c.type === "toolCall");
        assert.ok(call, JSON.stringify(first));
        const messages = chat.messages();
        assert.equal(messages.length, 2);
        assert.equal(messages[1].toolCalls[0].id, call.id);
        const result = { role: "tool", toolCallId: call.id, content: '{"temperature_celsius": 21}' };
        const cold = await collect(qwen.generate([...messages, result], { tools, temperature: 0, maxTokens: 48 }));
        const turn = await collect(chat.send([result]));
        const strip = (chunks) => chunks.map((c) => (c.type === "complete" ? { ...c, usage: c.usage.completionTokens } : c));
        assert.deepEqual(strip(turn), strip(cold));
        assert.ok(turn.at(-1).usage.cachedTokens > 0);
        assert.equal(chat.messages().length, 4);
    } finally {
        chat.free();
    }
});

test("chat turns reuse the cache and equal cold generations; fork, truncate, save and restore", async () => {
    const chat = smollm.chat({ system: "Answer briefly.", temperature: 0, maxTokens: 16 });
    try {
        let previous = 0;
        for (const question of ["Name a river.", "How long is it?", "Thanks!"]) {
            const conversation = [...chat.messages(), { role: "user", content: question }];
            const cold = await collect(smollm.generate(conversation, { temperature: 0, maxTokens: 16 }));
            const turn = await collect(chat.send(question));
            const text = (chunks) => chunks.filter((c) => c.type === "text").map((c) => c.text).join("");
            assert.equal(text(turn), text(cold));
            const { usage } = turn.at(-1);
            assert.equal(usage.promptTokens, cold.at(-1).usage.promptTokens);
            assert.ok(usage.cachedTokens >= previous, `${usage.cachedTokens} cached after a prompt of ${previous}`);
            previous = usage.promptTokens;
        }
        assert.equal(chat.messages().length, 7);
        assert.ok(chat.cachedTokens > previous);

        const fork = chat.fork();
        fork.truncate(3);
        assert.equal(fork.messages().length, 3);
        assert.equal(chat.messages().length, 7);
        const saved = fork.save();
        const restored = smollm.restoreChat(saved, { temperature: 0, maxTokens: 8 });
        const a = await collect(fork.send("And another river?", { maxTokens: 8 }));
        const b = await collect(restored.send("And another river?"));
        assert.deepEqual(a.filter((c) => c.type === "text"), b.filter((c) => c.type === "text"));
        assert.equal(a.at(-1).usage.cachedTokens, b.at(-1).usage.cachedTokens);
        assert.throws(() => qwen.restoreChat(saved), /cannot restore the session/);
        fork.free();
        restored.free();

        // One turn at a time; a cancelled turn gives the cache back.
        const running = chat.send("Count to ten.");
        assert.throws(() => chat.send("Hi"), /still running/);
        await running.cancel();
        await collect(chat.send("Hi", { maxTokens: 2 }));
    } finally {
        chat.free();
    }
});
