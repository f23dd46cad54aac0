// Scoring chunks of tokens in llama.cpp (node-llama-cpp 3.21.1) as llama-perplexity does, shared
// by logprobs.mjs and self-divergence.mjs.

// Evaluates each chunk from an empty `sequence`: its first `first` tokens at once, then the
// scored positions `first .. len-2` `atOnce` at a time (so that only their probability maps,
// a whole vocabulary each, are alive at once; 1 runs each as generation runs a token). Calls
// `visit(chunk, j, probabilities)` for every scored position j in order, with the softmax of
// position j's logits, most likely first.
export async function scoreChunks(sequence, chunks, first, atOnce, visit) {
    const scored = { generateNext: { probabilities: true, options: { temperature: 0 } } };
    for (const chunk of chunks) {
        await sequence.clearHistory();
        await sequence.controlledEvaluate(chunk.slice(0, first));
        for (let start = first; start < chunk.length - 1; start += atOnce) {
            const end = Math.min(start + atOnce, chunk.length - 1);
            const output = await sequence.controlledEvaluate(chunk.slice(start, end).map((id) => [id, scored]));
            for (let j = start; j < end; j++) {
                const probabilities = output[j - start]?.next?.probabilities;
                if (!probabilities) throw new Error(`no probabilities at position ${j}`);
                visit(chunk, j, probabilities);
            }
        }
    }
}
