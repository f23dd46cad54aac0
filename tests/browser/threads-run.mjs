// One run of the npm package for tests/browser/threads.mjs, in whatever realm imports it: set
// `candlewickThreads` (unless undefined), import pkg/index.js, load the model, generate greedily
// from each prompt. Imported by a module worker, it runs on the first message and posts back
// the result. Each realm imports the package once, so each run needs a realm of its own.

/**
 * @param {{ threads?: number, model: string, prompts: (string | object[])[], maxTokens: number }} request
 * @returns {Promise<{ threads: number, isolated: boolean, texts: string[], usage: object[] } | { error: string }>}
 */
export async function run({ threads, model, prompts, maxTokens }) {
  try {
    if (threads !== undefined) globalThis.candlewickThreads = threads;
    const { Model, iterate } = await import("/pkg/index.js");
    const loaded = await Model.load(model, { cache: false });
    const texts = [];
    const usage = [];
    for (const prompt of prompts) {
      const raw = typeof prompt === "string";
      for await (const chunk of iterate(loaded.generate(prompt, { raw, maxTokens, temperature: 0 }))) {
        if (chunk.type === "error") throw new Error(chunk.message);
        if (chunk.type === "complete") {
          texts.push(chunk.text);
          usage.push(chunk.usage);
        }
      }
    }
    const result = { threads: loaded.info().threads, isolated: globalThis.crossOriginIsolated === true, texts, usage };
    loaded.free();
    return result;
  } catch (error) {
    return { error: String(error?.stack ?? error) };
  }
}

if (typeof WorkerGlobalScope === "function" && globalThis instanceof WorkerGlobalScope) {
  globalThis.onmessage = async ({ data }) => globalThis.postMessage(await run(data));
}
