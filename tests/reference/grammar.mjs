// Reference greedy generation under a GBNF grammar by llama.cpp (node-llama-cpp 3.21.1).
// usage: node grammar.mjs MODEL.gguf < request.json
//   request:  {"runs": [{"prompt": [ids], "grammar": "root ::= ..."}, ...],
//              "maxTokens": 64,           // at most this many generated tokens per run
//              "threads": 1, "contextSize": 1024}
//   response: {"outputs": [[ids], ...]}   // greedy continuation per run; ends right after an
//                                          // end-of-generation token (included) or at maxTokens
//
// The grammar goes through llama.createGrammar({grammar}) and a fresh
// LlamaGrammarEvaluationState per run. With temperature 0 node-llama-cpp samples greedily,
// checks the winner against the grammar and, when the grammar refuses it, applies
// llama.cpp's grammar sampler (every refused candidate's logit set to -inf) and samples
// again: the argmax of the tokens the grammar allows. Each run starts from an empty KV cache.
import { getLlama, LlamaGrammarEvaluationState } from "node-llama-cpp";
import { readFileSync } from "node:fs";

const modelPath = process.argv[2];
if (!modelPath) {
    process.stderr.write("usage: node grammar.mjs MODEL.gguf < request.json\n");
    process.exit(2);
}
const request = JSON.parse(readFileSync(0, "utf8"));
const runs = request.runs;
const maxTokens = request.maxTokens ?? 64;
const threads = request.threads ?? 1;
const contextSize = request.contextSize ?? 1024;
if (!Array.isArray(runs)) throw new Error("request.runs must be an array of {prompt, grammar}");

const llama = await getLlama({
    gpu: false,
    build: "never",
    logLevel: "error",
    maxThreads: threads,
    logger: (level, message) => process.stderr.write(`[llama.cpp ${level}] ${message}\n`),
});
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const context = await model.createContext({ contextSize, sequences: 1, threads });
const sequence = context.getSequence();

const outputs = [];
try {
    for (const [index, { prompt, grammar: text }] of runs.entries()) {
        if (!Array.isArray(prompt) || prompt.length === 0) throw new Error(`run ${index}: prompt must be a non-empty array of token ids`);
        if (typeof text !== "string") throw new Error(`run ${index}: grammar must be a string`);
        await sequence.clearHistory();
        const grammar = await llama.createGrammar({ grammar: text });
        const grammarEvaluationState = new LlamaGrammarEvaluationState({ model, grammar });
        const generated = [];
        const it = sequence.evaluate(prompt, { temperature: 0, yieldEogToken: true, grammarEvaluationState });
        try {
            for await (const token of it) {
                generated.push(token);
                if (model.isEogToken(token) || generated.length >= maxTokens) break;
            }
        } finally {
            await it.return();
        }
        outputs.push(generated);
    }
    process.stdout.write(JSON.stringify({ outputs }) + "\n");
} finally {
    await sequence.dispose();
    await context.dispose();
    await model.dispose();
    await llama.dispose();
}
