//! `candlewick`: the command-line tool. It reads models from disk, so it exists natively only;
//! the wasm32 build of the crate is the library (the npm package).

#[cfg(not(target_arch = "wasm32"))]
mod cli;
#[cfg(not(target_arch = "wasm32"))]
mod perplexity_cli;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
