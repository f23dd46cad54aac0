//! The named routes find their models' published files in the models directory.

use candlewick::Route;

/// One test in this binary: it sets `CANDLEWICK_CACHE`, which every route reads.
#[test]
fn routes_find_their_published_files() {
    let cache = std::env::temp_dir().join(format!("candlewick-routes-{}", std::process::id()));
    let models = cache.join("models");
    std::fs::create_dir_all(&models).expect("a temp dir");
    std::env::set_var("CANDLEWICK_CACHE", &cache);

    // Nothing there: where the usual file would be, which the missing-file error names.
    assert_eq!(Route::KimiK2.default_path(), models.join(Route::KimiK2.file_name()));
    assert_eq!(Route::Qwen3Coder.default_path(), models.join("Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf"));

    // A split quantization is found by its first shard, whatever the shard count; a later
    // shard alone is not a model.
    std::fs::write(models.join("Kimi-K2-Instruct-UD-IQ3_XXS-00002-of-00009.gguf"), b"").expect("write");
    assert_eq!(Route::KimiK2.default_path(), models.join(Route::KimiK2.file_name()));
    std::fs::write(models.join("Kimi-K2-Instruct-UD-IQ3_XXS-00001-of-00009.gguf"), b"").expect("write");
    assert_eq!(Route::KimiK2.default_path(), models.join("Kimi-K2-Instruct-UD-IQ3_XXS-00001-of-00009.gguf"));
    // The smaller quantization comes first in the list, so it is preferred when both are there.
    std::fs::write(models.join("Kimi-K2-Instruct-UD-IQ1_S-00001-of-00006.gguf"), b"").expect("write");
    assert_eq!(Route::KimiK2.default_path(), models.join("Kimi-K2-Instruct-UD-IQ1_S-00001-of-00006.gguf"));

    std::fs::write(models.join("Qwen3-Coder-30B-A3B-Instruct-Q8_0.gguf"), b"").expect("write");
    assert_eq!(Route::Qwen3Coder.default_path(), models.join("Qwen3-Coder-30B-A3B-Instruct-Q8_0.gguf"));

    // Every route says how much memory each of its files needs.
    for route in Route::ALL {
        assert!(!route.known_files().is_empty() && route.known_files().iter().all(|f| f.gib > 0.0), "{route:?}");
    }
    std::fs::remove_dir_all(&cache).ok();
}
