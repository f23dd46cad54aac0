//! Browser shell (WebAssembly). The wasm-bindgen surface comes with the npm package; for now
//! this holds what the target-neutral code needs from the target.

/// Runs `work(index, chunk)` on each `chunk`-long piece of `data`, one after the other (the
/// browser build is single-threaded).
pub(crate) fn parallel_chunks<T>(data: &mut [T], chunk: usize, work: impl Fn(usize, &mut [T])) {
    data.chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| work(i, c));
}

/// Runs `work` (the browser build has one thread, whatever is asked).
pub(crate) fn with_threads<T>(_threads: Option<usize>, work: impl FnOnce() -> T) -> T {
    work()
}
