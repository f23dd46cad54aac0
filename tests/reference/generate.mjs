// Reference greedy generation by llama.cpp (node-llama-cpp 3.21.1).
// usage: node generate.mjs MODEL.gguf < request.json
//   request:  {"prompts": [[ids], ...],   // fed exactly as given (include BOS yourself if wanted)
//              "maxTokens": 16,           // at most this many generated tokens per prompt
//              "topK": 5,                 // optional: report the top-K of the first generated step
//              "grammars": ["root ::= ..."],  // optional: a GBNF grammar per prompt (null: none)
//              "threads": 1,              // optional, default 1 (2 threads are far slower on a busy 2-core box)
//              "contextSize": 1024}       // optional, default 1024
//   response: {"outputs": [[ids], ...],   // greedy continuation per prompt; ends right after an
//                                          // end-of-generation token (included) or at maxTokens
//              "firstTopProbabilities": [[[id, p], ...], ...]}   // only when topK was given
//
// firstTopProbabilities: node-llama-cpp does not expose raw logits, only
// softmax(logits) over the full vocabulary (float32, computed in its addon from the
// unmodified logits, since the greedy sampler chain does not touch them).
// Highest first. log(p) equals logit - logsumexp(logits).
//
// Greedy: temperature 0 makes node-llama-cpp's sampler chain a single
// llama_sampler_init_greedy() (pure argmax of the raw logits, ties -> lowest id).
// top-k / top-p / min-p / seed samplers are only added when temperature > 0, and
// no repeat penalty, DRY, XTC, token bias or grammar is passed, so none is created.
// A grammar goes through llama.createGrammar({grammar}) and a fresh
// LlamaGrammarEvaluationState per prompt. node-llama-cpp then samples greedily, checks the
// winner against the grammar and, when the grammar refuses it, applies llama.cpp's grammar
// sampler (every refused candidate's logit set to -inf) and samples again: the argmax of the
// tokens the grammar allows.
// Every prompt starts from an empty sequence (KV cache cleared), so results don't
// depend on prompt order.
import { getLlama, LlamaGrammarEvaluationState } from "node-llama-cpp";
import { readFileSync } from "node:fs";

const modelPath = process.argv[2];
if (!modelPath) {
    process.stderr.write("usage: node generate.mjs MODEL.gguf < request.json\n");
    process.exit(2);
}
const request = JSON.parse(readFileSync(0, "utf8"));
const prompts = request.prompts;
const maxTokens = request.maxTokens ?? 16;
const topK = request.topK;
const grammars = request.grammars;
if (grammars != null && (!Array.isArray(grammars) || grammars.length !== prompts?.length))
    throw new Error("request.grammars must be an array with one grammar (or null) per prompt");
const threads = request.threads ?? 1;
const contextSize = request.contextSize ?? 1024;
if (!Array.isArray(prompts)) throw new Error("request.prompts must be an array of token id arrays");
if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new Error("request.maxTokens must be an integer >= 0");
if (topK != null && (!Number.isInteger(topK) || topK <= 0)) throw new Error("request.topK must be a positive integer");

// Only the exact greedy configuration is ever used.
const greedyOptions = {
    temperature: 0,
    yieldEogToken: true, // we want the EOG token itself in the output; we stop after it ourselves
};

const llama = await getLlama({
    gpu: false,
    build: "never",
    logLevel: "error",
    maxThreads: threads,
    logger: (level, message) => process.stderr.write(`[llama.cpp ${level}] ${message}\n`),
});
const model = await llama.loadModel({ modelPath, vocabOnly: false, gpuLayers: 0 });
const context = await model.createContext({ contextSize, sequences: 1, threads });
const sequence = context.getSequence();
const nVocab = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length ?? Infinity;

// Appends the tokens `it` yields to `generated` until an end-of-generation token or maxTokens.
async function collect(it, generated) {
    try {
        for await (const token of it) {
            generated.push(token);
            if (model.isEogToken(token) || generated.length >= maxTokens) break;
        }
    } finally {
        await it.return();
    }
}

const outputs = [];
const firstTop = [];
try {
    for (const [promptIndex, prompt] of prompts.entries()) {
        if (!Array.isArray(prompt) || prompt.length === 0)
            throw new Error(`prompt ${promptIndex} must be a non-empty array of token ids`);
        for (const id of prompt)
            if (!Number.isInteger(id) || id < 0 || id >= nVocab)
                throw new Error(`prompt ${promptIndex}: invalid token id ${id}`);
        if (prompt.length + maxTokens > context.contextSize)
            throw new Error(`prompt ${promptIndex}: ${prompt.length} + ${maxTokens} tokens exceed the context size ${context.contextSize}`);

        // start from an empty KV cache for every prompt
        await sequence.clearHistory();
        if (sequence.nextTokenIndex !== 0) throw new Error("sequence was not cleared");

        const generated = [];
        const grammarText = grammars?.[promptIndex];
        if (grammarText != null) {
            if (topK != null) throw new Error("topK and grammars cannot be combined");
            const grammar = await llama.createGrammar({ grammar: grammarText });
            const grammarEvaluationState = new LlamaGrammarEvaluationState({ model, grammar });
            await collect(sequence.evaluate(prompt, { ...greedyOptions, grammarEvaluationState }), generated);
            outputs.push(generated);
            continue;
        }
        if (maxTokens === 0) {
            outputs.push(generated);
            if (topK != null) firstTop.push([]);
            continue;
        }

        // First step: evaluate the prompt and sample one token (with the full
        // probability list when topK is requested).
        {
            const it = sequence.evaluateWithMetadata(prompt, { probabilities: topK != null }, greedyOptions);
            const { value, done } = await it.next();
            await it.return(); // the sampled token is not fed to the model yet
            if (done || value == null) throw new Error(`prompt ${promptIndex}: no token was generated`);
            generated.push(value.token);
            if (topK != null) {
                const top = [];
                for (const [id, p] of value.probabilities) { // sorted by logit, highest first
                    if (top.length >= topK) break;
                    top.push([id, p]);
                }
                if (top[0][0] !== value.token)
                    throw new Error(`prompt ${promptIndex}: greedy token ${value.token} is not the top-probability token ${top[0][0]}`);
                firstTop.push(top);
            }
        }

        // Remaining steps: feed the last generated token, sample greedily.
        if (generated.length < maxTokens && !model.isEogToken(generated[0]))
            await collect(sequence.evaluate([generated[0]], greedyOptions), generated);
        outputs.push(generated);
    }

    const response = { outputs };
    if (topK != null) response.firstTopProbabilities = firstTop;
    process.stdout.write(JSON.stringify(response) + "\n");
} finally {
    await sequence.dispose();
    await context.dispose();
    await model.dispose();
    await llama.dispose();
}
