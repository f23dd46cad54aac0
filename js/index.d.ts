// The declarations of both entry points (index.js, node.js): the wasm module is initialised on
// import, so only the API is exported.
export { Model, iterate } from "./candlewick.js";
export type {
    ChatMessage,
    ChatOptions,
    ChatSession,
    Chunk,
    GenerateOptions,
    LoadOptions,
    LoadProgress,
    ModelInfo,
    TokenizeOptions,
    Tool,
    ToolCallMessage,
    ToolChoice,
    TurnOptions,
    Usage,
} from "./candlewick.js";

declare global {
    /**
     * How many threads the browser entry runs on, read once when it is first imported: set it
     * before the import (1 for the single-thread build). By default one per core, where the
     * threaded build can run: in a worker of a cross-origin isolated page. `model.info().threads`
     * says how many are in use.
     */
    var candlewickThreads: number | undefined;
}
