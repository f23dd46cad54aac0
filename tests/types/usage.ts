// Type-checks the package's TypeScript declarations the way a user writes against them
// (`tsc --noEmit -p tests/types`): every option is optional, chunks narrow on `type`.
import { Model, iterate, type ChatSession, type Chunk, type GenerateOptions, type LoadProgress, type Tool } from "../../pkg/index.js";

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
        else if (c.type === "toolCall") text += `${c.id}: ${c.name}(${JSON.parse(c.arguments)})`;
        else if (c.type === "complete") text += ` (${c.finishReason}, ${c.usage.decodeTokensPerSecond} tok/s, ${c.usage.cachedTokens} cached)`;
        else throw new Error(c.message);
    }
    const tools: Tool[] = [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }, { name: "search" }];
    const chat: ChatSession = model.chat({ system: "Be brief.", tools, toolChoice: "auto", maxTokens: 8 });
    for await (const chunk of iterate(chat.send("Weather in Oslo?", { temperature: 0 }))) {
        if (chunk.type === "toolCall") {
            const result = chat.send([{ role: "tool", toolCallId: chunk.id, content: "9 °C" }]);
            await result.cancel();
        }
    }
    const cached: number = chat.cachedTokens;
    const fork: ChatSession = chat.fork();
    fork.truncate(1);
    const saved: Uint8Array = fork.save();
    model.restoreChat(saved, { maxTokens: 4 }).free();
    text += `${cached} ${chat.messages().length}`;
    const constrained: GenerateOptions[] = [{ grammar: 'root ::= "yes" | "no"' }, { jsonSchema: { type: "object" } }, { jsonSchema: '{"type": "string"}' }];
    // @ts-expect-error: a grammar is GBNF text
    const bad: GenerateOptions = { grammar: 42 };
    void [constrained, bad];
    const ids: Uint32Array = model.tokenize(text);
    const info = model.info();
    const threads: number = info.threads;
    const device: "gpu" | "cpu" = info.device;
    const why: string | null = info.deviceReason ?? info.adapter;
    await Model.load("model.gguf", { device: "auto" });
    void [device, why];
    globalThis.candlewickThreads = 2;
    model.free();
    return `${info.architecture} on ${threads} threads: ${ids.length} tokens, ${model.detokenize(ids)}`;
}
