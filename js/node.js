// candlewick for Node.js: the wasm module is read from disk (Node's fetch cannot read
// file: URLs) and initialised before the first import resolves.
import { readFile } from "node:fs/promises";
import init, { Model } from "./candlewick.js";
import { refuseFreed } from "./freed.js";

await init({ module_or_path: await readFile(new URL("./candlewick_bg.wasm", import.meta.url)) });

refuseFreed(Model);
export { Model, iterate } from "./candlewick.js";
