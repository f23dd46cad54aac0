//! Random blocks of every ggml type (tests/common/quants.rs) dequantize, with the Python
//! package `gguf`, to finite values spread with the standard deviation asked for.

mod common;

use common::quants::{block_size, random_blocks};
use common::synthetic::Rng;
use serde_json::json;

/// Every type `random_blocks` writes: F32 F16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K
/// IQ2_XXS IQ2_XS IQ3_XXS IQ1_S IQ4_NL IQ3_S IQ2_S IQ4_XS IQ1_M BF16 TQ1_0 TQ2_0 MXFP4.
const TYPES: [u32; 25] = [0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 29, 30, 34, 35, 39];
const MXFP4: u32 = 39;
const TQ2_0: u32 = 35;
const VALUES: usize = 1 << 18;
const SIGMA: f32 = 0.02;

#[test]
fn random_blocks_spread_as_asked() {
    let dir = std::env::temp_dir().join(format!("candlewick-quants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::new(7);
    let mut items = Vec::new();
    for t in TYPES {
        let bytes = random_blocks(t, VALUES, SIGMA, &mut rng);
        let (per_block, block_bytes) = block_size(t).unwrap();
        assert_eq!(bytes.len(), VALUES / per_block * block_bytes, "type {t}");
        if let Some((e, b)) = candlewick::gguf::ggml_type_block(t) {
            assert_eq!((e as usize, b as usize), (per_block, block_bytes), "type {t}: block size as the GGUF reader has it");
        }
        let path = dir.join(format!("{t}.bin"));
        std::fs::write(&path, &bytes).unwrap();
        items.push(json!({ "type": t, "path": path }));
    }
    let result = common::python("quant_std.py", &json!({ "items": items }));
    std::fs::remove_dir_all(&dir).unwrap();
    let recalibrating = std::env::var_os("QUANT_STD_UNIT").is_some();
    let mut failures = Vec::new();
    for item in result["items"].as_array().unwrap() {
        let t = item["type"].as_u64().unwrap() as u32;
        assert_eq!(item["values"].as_u64().unwrap() as usize, VALUES, "type {t}: the values Python read");
        if !item["finite"].as_bool().unwrap() {
            failures.push(format!("type {t}: non-finite values"));
            continue;
        }
        let (std, mean) = (item["std"].as_f64().unwrap() as f32, item["mean"].as_f64().unwrap() as f32);
        if recalibrating {
            println!("type {t:>2}: std per unit scale {:.4} (asked {SIGMA}), mean {mean:+.5}", std / SIGMA);
            continue;
        }
        // MXFP4's scale is a power of two: the nearest one is within a factor √2.
        let tolerance = if t == MXFP4 { std::f32::consts::SQRT_2 } else { 1.05 };
        if std > SIGMA * tolerance || std < SIGMA / tolerance {
            failures.push(format!("type {t}: std {std:.5}, asked {SIGMA} (tolerance ×{tolerance})"));
        }
        // Formats whose codes are not symmetric about zero keep their small offset (Q4_0's
        // q − 8 has mean −½ step); TQ2_0's codes are {−1, 0, 1, 2}, mean ½ step.
        let offset = if t == TQ2_0 { 0.5 } else { 0.15 };
        if mean.abs() > offset * SIGMA {
            failures.push(format!("type {t}: mean {mean:.5}, not near zero"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same seed gives the same bytes; blocks are not all alike.
#[test]
fn random_blocks_are_reproducible_and_random() {
    for t in TYPES {
        let a = random_blocks(t, 4096, SIGMA, &mut Rng::new(3));
        let b = random_blocks(t, 4096, SIGMA, &mut Rng::new(3));
        assert_eq!(a, b, "type {t}");
        let (_, block_bytes) = block_size(t).unwrap();
        let first = &a[..block_bytes];
        assert!(a.chunks(block_bytes).skip(1).any(|blk| blk != first), "type {t}: every block alike");
    }
}
