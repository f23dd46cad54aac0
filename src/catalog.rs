//! The named model routes of the system candlewick replaces. Every route runs real inference;
//! none returns canned text. A route knows its architecture and where its file usually comes
//! from; the caller can always give any GGUF file instead.

use crate::arch::SUPPORTED_ARCHITECTURES;
use crate::error::{Error, Result};

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

    /// The file name the route's model usually has.
    pub fn file_name(&self) -> &'static str {
        match self {
            Route::KimiK2 => "Kimi-K2-Instruct-Q4_K_M.gguf",
            Route::Qwen3Coder => "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf",
            Route::SmolLM2 => "SmolLM2-135M-Instruct.Q4_1.gguf",
            Route::Qwen25Coder => "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            Route::Gemma3 => "gemma-3-270m-q4_k_m.gguf",
        }
    }

    /// Where the file comes from, in words.
    pub fn how_to_get(&self) -> &'static str {
        match self {
            Route::KimiK2 => "a Kimi K2 GGUF conversion (deepseek2 architecture, about 1 TB at 8 bits); none is fetched automatically",
            Route::Qwen3Coder => "a Qwen3-Coder GGUF conversion; none is fetched automatically",
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
