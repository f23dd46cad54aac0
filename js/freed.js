// A call on a model after `model.free()` says that the model was freed. Without this,
// wasm-bindgen's own check answers "null pointer passed to rust".

/** Wraps each method of `Model` (but `free`) to throw an `Error` naming it once freed. */
export function refuseFreed(Model) {
    for (const name of Object.getOwnPropertyNames(Model.prototype)) {
        const method = Object.getOwnPropertyDescriptor(Model.prototype, name).value;
        if (name === "constructor" || name === "free" || typeof method !== "function") continue;
        Model.prototype[name] = function (...args) {
            // wasm-bindgen sets the pointer to 0 when the Rust value is freed.
            if (!this.__wbg_ptr) throw new Error(`model.${name}(): the model was freed (model.free() was called); load it again`);
            return method.apply(this, args);
        };
    }
    return Model;
}
