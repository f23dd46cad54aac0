// Type-checks the package's TypeScript declarations the way a user writes against them
// (`tsc --noEmit -p tests/types`): every option is optional, chunks narrow on `type`.
import { Model, iterate, type Chunk, type GenerateOptions, type LoadProgress } from "../../pkg/index.js";

export async function example(bytes: Uint8Array): Promise<string> {
    const model = await Model.load(bytes);
    await Model.load("model.gguf", { onProgress: (p: LoadProgress) => p.loaded / p.total, cache: false });
    const options: GenerateOptions = { maxTokens: 8, temperature: 0, stop: ["\n"] };
    let text = "";
    for await (const chunk of iterate(model.generate([{ role: "user", content: "Hi" }], options))) {
        const c: Chunk = chunk;
        // @ts-expect-error: a text chunk has no usage
        if (c.type === "text") void c.usage;
        if (c.type === "text") text += c.text;
        else if (c.type === "complete") text += ` (${c.finishReason}, ${c.usage.decodeTokensPerSecond} tok/s)`;
        else throw new Error(c.message);
    }
    const constrained: GenerateOptions[] = [{ grammar: 'root ::= "yes" | "no"' }, { jsonSchema: { type: "object" } }, { jsonSchema: '{"type": "string"}' }];
    // @ts-expect-error: a grammar is GBNF text
    const bad: GenerateOptions = { grammar: 42 };
    void [constrained, bad];
    const ids: Uint32Array = model.tokenize(text);
    const info = model.info();
    const threads: number = info.threads;
    globalThis.candlewickThreads = 2;
    model.free();
    return `${info.architecture} on ${threads} threads: ${ids.length} tokens, ${model.detokenize(ids)}`;
}
