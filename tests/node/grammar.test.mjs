// Constrained output through the npm package in Node.js 20: `grammar` (GBNF) and `jsonSchema`
// (an object or its JSON text), and the errors bad ones give. Run with `node --test tests/node/`
// after `make pkg` and `make models`.
import assert from "node:assert/strict";
import { access, readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Model, iterate } from "../../pkg/node.js";

const FILE = "SmolLM2-135M-Instruct.Q4_1.gguf";
const path = join(process.env.CANDLEWICK_CACHE || join(homedir(), ".cache", "candlewick"), "models", FILE);
let model;

before(async () => {
    await access(path).catch(() => assert.fail(`${path} is missing: run \`make models\``));
    model = await Model.load(await readFile(path));
});

after(() => model?.free());

/** The complete chunk of a generation (failing on an error chunk). */
async function complete(stream) {
    let last;
    for await (const chunk of iterate(stream)) {
        if (chunk.type === "error") assert.fail(chunk.message);
        last = chunk;
    }
    assert.equal(last.type, "complete");
    return last;
}

const schema = {
    type: "object",
    properties: {
        name: { type: "string", maxLength: 12 },
        legs: { type: "integer", minimum: 0, maximum: 8 },
        kind: { enum: ["bird", "mammal", "insect"] },
    },
    required: ["name", "legs", "kind"],
};

test("jsonSchema constrains the output to JSON that fits the schema, object or text alike", async () => {
    const options = { maxTokens: 80, temperature: 0 };
    const fromObject = await complete(model.generate("Describe an animal as JSON.", { ...options, jsonSchema: schema }));
    const fromText = await complete(model.generate("Describe an animal as JSON.", { ...options, jsonSchema: JSON.stringify(schema) }));
    assert.equal(fromObject.text, fromText.text);
    assert.equal(fromObject.finishReason, "stop");
    const value = JSON.parse(fromObject.text);
    assert.equal(typeof value.name, "string");
    assert.ok(value.name.length <= 12, fromObject.text);
    assert.ok(Number.isInteger(value.legs) && value.legs >= 0 && value.legs <= 8, fromObject.text);
    assert.ok(["bird", "mammal", "insect"].includes(value.kind), fromObject.text);
    // Sampled, too.
    for (const seed of [1, 2, 3]) {
        const sampled = await complete(model.generate("Describe an animal as JSON.", { maxTokens: 80, seed, temperature: 1, jsonSchema: schema }));
        const v = JSON.parse(sampled.text);
        assert.ok(["bird", "mammal", "insect"].includes(v.kind), sampled.text);
    }
});

test("grammar constrains the output to GBNF", async () => {
    const { text } = await complete(model.generate("Is the sun hot?", { maxTokens: 32, temperature: 0, grammar: 'root ::= ("Yes" | "No") "! " [A-Za-z ]{1,20} "."' }));
    assert.match(text, /^(Yes|No)! [A-Za-z ]{1,20}\.$/);
});

test("a bad grammar or schema throws an error that says where", () => {
    assert.throws(() => model.generate("Hi", { grammar: 'root ::= "a"\nitem "b"' }), /line 2, column 6/);
    assert.throws(() => model.generate("Hi", { grammar: "root ::= undefined-rule" }), /undefined-rule/);
    assert.throws(() => model.generate("Hi", { jsonSchema: { type: "object", properties: { a: { not: {} } } } }), /#\/properties\/a\/not/);
    assert.throws(() => model.generate("Hi", { jsonSchema: "{ not json" }), /not valid JSON/);
    assert.throws(() => model.generate("Hi", { grammar: 'root ::= "a"', jsonSchema: {} }), TypeError);
    assert.throws(() => model.generate("Hi", { grammar: 42 }), TypeError);
    assert.throws(() => model.generate("Hi", { jsonSchema: 42 }), TypeError);
});
