//! The named model routes of the system candlewick replaces. Every route runs real inference;
//! none returns canned text. A route knows its architecture and where its file usually comes
//! from; the caller can always give any GGUF file instead.

use crate::arch::SUPPORTED_ARCHITECTURES;
use crate::error::{Error, Result};

/// A published GGUF file (or split set of files) of a route's model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownFile {
    /// The quantization, as its publisher names it (`UD-IQ1_S`, `Q4_K_M`).
    pub quant: &'static str,
    /// The file name; for a split model the name shared by its shards, which are named
    /// `<stem>-00001-of-000NN.gguf`, … (gguf-split's names).
    pub name: &'static str,
    /// Whether the model comes in shards.
    pub split: bool,
    /// Its size in GiB (all shards), the memory it runs in at full speed besides its KV cache:
    /// files are memory-mapped, so with less memory it still runs, at the speed of the disk.
    pub gib: f64,
}

/// Kimi K2 Instruct as people run it: unsloth's dynamic quantizations (Hugging Face
/// `unsloth/Kimi-K2-Instruct-GGUF`), in shards. Sizes as published, 1 GB = 10⁹ bytes, in GiB.
const KIMI_K2_FILES: &[KnownFile] = &[
    KnownFile { quant: "UD-TQ1_0", name: "Kimi-K2-Instruct-UD-TQ1_0", split: true, gib: 245e9 / GIB },
    KnownFile { quant: "UD-IQ1_S", name: "Kimi-K2-Instruct-UD-IQ1_S", split: true, gib: 280e9 / GIB },
    KnownFile { quant: "UD-IQ2_M", name: "Kimi-K2-Instruct-UD-IQ2_M", split: true, gib: 347e9 / GIB },
    KnownFile { quant: "UD-Q2_K_XL", name: "Kimi-K2-Instruct-UD-Q2_K_XL", split: true, gib: 382e9 / GIB },
    KnownFile { quant: "UD-IQ3_XXS", name: "Kimi-K2-Instruct-UD-IQ3_XXS", split: true, gib: 417e9 / GIB },
    KnownFile { quant: "Q3_K_M", name: "Kimi-K2-Instruct-Q3_K_M", split: true, gib: 489e9 / GIB },
    KnownFile { quant: "IQ4_XS", name: "Kimi-K2-Instruct-IQ4_XS", split: true, gib: 547e9 / GIB },
    KnownFile { quant: "UD-Q4_K_XL", name: "Kimi-K2-Instruct-UD-Q4_K_XL", split: true, gib: 587e9 / GIB },
];

/// Qwen3-Coder-30B-A3B-Instruct in one file each. Q4_K_M's size is llama.cpp's mainline mix
/// over the model's exact tensor shapes; Q6_K and Q8_0 are its 30.53 billion parameters at
/// their formats' bits per weight (6.5625, 8.5) plus the F32 norms and routers.
const QWEN3_CODER_FILES: &[KnownFile] = &[
    KnownFile { quant: "Q4_K_M", name: "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf", split: false, gib: 17.28 },
    KnownFile { quant: "Q6_K", name: "Qwen3-Coder-30B-A3B-Instruct-Q6_K.gguf", split: false, gib: 23.3 },
    KnownFile { quant: "Q8_0", name: "Qwen3-Coder-30B-A3B-Instruct-Q8_0.gguf", split: false, gib: 30.2 },
];

const GIB: f64 = (1u64 << 30) as f64;

/// A named model route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Kimi K2 (and DeepSeek-V3-style files): the `deepseek2` architecture, multi-head latent
    /// attention with a mixture of experts.
    KimiK2,
    /// Qwen3-Coder: `qwen3moe` for the 30B-A3B model, `qwen3` for dense ones.
    Qwen3Coder,
    /// SmolLM2-135M-Instruct (`llama`).
    SmolLM2,
    /// Qwen2.5-Coder-0.5B-Instruct (`qwen2`).
    Qwen25Coder,
    /// Gemma 3 270M (`gemma3`).
    Gemma3,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 5] = [Route::KimiK2, Route::Qwen3Coder, Route::SmolLM2, Route::Qwen25Coder, Route::Gemma3];

    /// The route's name.
    pub fn name(&self) -> &'static str {
        match self {
            Route::KimiK2 => "KimiK2",
            Route::Qwen3Coder => "Qwen3Coder",
            Route::SmolLM2 => "SmolLM2",
            Route::Qwen25Coder => "Qwen25Coder",
            Route::Gemma3 => "Gemma3",
        }
    }

    /// The `general.architecture` values the route's files carry.
    pub fn architectures(&self) -> &'static [&'static str] {
        match self {
            Route::KimiK2 => &["deepseek2"],
            Route::Qwen3Coder => &["qwen3moe", "qwen3"],
            Route::SmolLM2 => &["llama"],
            Route::Qwen25Coder => &["qwen2"],
            Route::Gemma3 => &["gemma3"],
        }
    }

    /// The published files of the route's model, the one looked for first first.
    pub fn known_files(&self) -> &'static [KnownFile] {
        match self {
            Route::KimiK2 => KIMI_K2_FILES,
            Route::Qwen3Coder => QWEN3_CODER_FILES,
            Route::SmolLM2 => &[KnownFile { quant: "Q4_1", name: "SmolLM2-135M-Instruct.Q4_1.gguf", split: false, gib: 0.09 }],
            Route::Qwen25Coder => &[KnownFile { quant: "Q4_K_M", name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", split: false, gib: 0.46 }],
            Route::Gemma3 => &[KnownFile { quant: "Q4_K_M", name: "gemma-3-270m-q4_k_m.gguf", split: false, gib: 0.24 }],
        }
    }

    /// The file name of the route's usual model file (for a split model, its first shard's
    /// name has `-00001-of-000NN` before `.gguf`).
    pub fn file_name(&self) -> &'static str {
        match self {
            Route::KimiK2 => "Kimi-K2-Instruct-UD-IQ1_S-00001-of-NNNNN.gguf",
            Route::Qwen3Coder => "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf",
            Route::SmolLM2 => "SmolLM2-135M-Instruct.Q4_1.gguf",
            Route::Qwen25Coder => "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            Route::Gemma3 => "gemma-3-270m-q4_k_m.gguf",
        }
    }

    /// Where the file comes from, in words.
    pub fn how_to_get(&self) -> &'static str {
        match self {
            Route::KimiK2 => "download the shards of one of unsloth's Kimi K2 quantizations (Hugging Face unsloth/Kimi-K2-Instruct-GGUF; UD-IQ1_S is 280 GB) into the models directory and open the first shard; none is fetched automatically",
            Route::Qwen3Coder => "download a Qwen3-Coder-30B-A3B-Instruct GGUF (e.g. unsloth/Qwen3-Coder-30B-A3B-Instruct-GGUF, Q4_K_M, 17.3 GiB) into the models directory; none is fetched automatically",
            Route::SmolLM2 => "run `scripts/fetch-models.sh smollm2`",
            Route::Qwen25Coder => "run `scripts/fetch-models.sh qwen25coder`",
            Route::Gemma3 => "run `scripts/fetch-models.sh gemma3`",
        }
    }

    /// Checks that a file's architecture belongs to this route and can run.
    ///
    /// # Errors
    /// [`Error::UnsupportedArchitecture`] when candlewick cannot run it,
    /// [`Error::InvalidParameter`] when the file is another route's model.
    pub fn check_architecture(&self, architecture: &str) -> Result<()> {
        if !self.architectures().contains(&architecture) {
            return Err(Error::InvalidParameter {
                name: "model",
                reason: format!("the {} route runs {} files, this file is `{architecture}`", self.name(), self.architectures().join(" or ")),
            });
        }
        if !SUPPORTED_ARCHITECTURES.contains(&architecture) {
            return Err(Error::UnsupportedArchitecture { name: architecture.to_string(), supported: SUPPORTED_ARCHITECTURES.join(", ") });
        }
        Ok(())
    }
}

impl std::str::FromStr for Route {
    type Err = Error;

    fn from_str(s: &str) -> Result<Route> {
        Route::ALL.into_iter().find(|r| r.name().eq_ignore_ascii_case(s)).ok_or_else(|| Error::InvalidParameter {
            name: "route",
            reason: format!("unknown route `{s}` (known: {})", Route::ALL.map(|r| r.name()).join(", ")),
        })
    }
}
