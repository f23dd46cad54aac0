// The declarations of both entry points (index.js, node.js): the wasm module is initialised on
// import, so only the API is exported.
export { Model, iterate } from "./candlewick.js";
export type { Chunk, ChatMessage, GenerateOptions, LoadOptions, LoadProgress, ModelInfo, TokenizeOptions, Usage } from "./candlewick.js";
