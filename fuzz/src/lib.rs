//! What the fuzz targets share: the three real models' tokenizers and chat templates, read
//! once from `$CANDLEWICK_MODELS` or `~/.cache/candlewick/models` (`make models` fetches them).

use std::path::PathBuf;
use std::sync::OnceLock;

/// The real models' files, as `scripts/fetch-models.sh` names them.
pub const MODEL_FILES: [&str; 3] =
    ["SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"];

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CANDLEWICK_MODELS") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache/candlewick/models")
}

/// The three real models, header and tokenizer only. A missing model stops the fuzzer with
/// what to run, rather than fuzzing nothing.
pub fn models() -> &'static [candlewick::Model] {
    static MODELS: OnceLock<Vec<candlewick::Model>> = OnceLock::new();
    MODELS.get_or_init(|| {
        MODEL_FILES
            .iter()
            .map(|name| {
                let path = models_dir().join(name);
                let mut file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("{} is missing ({e}): run `make models`", path.display()));
                candlewick::Model::read_without_weights(&mut file)
                    .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()))
            })
            .collect()
    })
}
