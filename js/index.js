// candlewick for browsers (and bundlers): the wasm module is fetched next to this file and
// initialised before the first import resolves, so `import { Model } from "candlewick"` is
// ready to use.
import init from "./candlewick.js";

await init({ module_or_path: new URL("./candlewick_bg.wasm", import.meta.url) });

export { Model, iterate } from "./candlewick.js";
