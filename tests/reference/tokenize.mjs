// Reference tokenization by llama.cpp (node-llama-cpp 3.21.1).
// usage: node tokenize.mjs MODEL.gguf < input.json
//   input:  {"texts": ["...", ...]}
//   output: {"plain": [[ids], ...], "special": [[ids], ...]}   (no BOS/EOS added)
import { getLlama } from "node-llama-cpp";
import { readFileSync } from "node:fs";

const modelPath = process.argv[2];
const { texts } = JSON.parse(readFileSync(0, "utf8"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath, vocabOnly: true });
const plain = texts.map((t) => Array.from(model.tokenize(t, false)));
const special = texts.map((t) => Array.from(model.tokenize(t, true)));
const detok = plain.map((ids) => model.detokenize(ids, false));
process.stdout.write(JSON.stringify({ plain, special, detok }));
await model.dispose();
await llama.dispose();
