//! Every block format's dequantization against the Python `gguf` package's (`gguf.quants`),
//! the reference for GGUF's layouts, grids and scales, on random blocks with finite scales.

use std::path::PathBuf;
use std::process::Command;

use candlewick::kernels::blocks::{dequantize, Format};
use half::f16;

/// The quantized types, by ggml id: the first ten formats and the ones added for Kimi K2's
/// files and the rest of llama.cpp's CPU types.
const TYPES: [u32; 23] = [2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 29, 30, 34, 35, 39];

fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// `blocks` random blocks of `format`: any bits, except f16 scales that are finite (small
/// normal numbers of either sign) and BF16 values that are finite.
fn random_blocks(format: Format, blocks: usize, next: &mut impl FnMut() -> u64) -> Vec<u8> {
    let (_, size) = format.block();
    let mut data: Vec<u8> = (0..blocks * size).map(|_| next() as u8).collect();
    let scale = |next: &mut dyn FnMut() -> u64| f16::from_f32(((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2);
    for b in data.chunks_exact_mut(size) {
        for &at in format.f16_scale_offsets() {
            b[at..at + 2].copy_from_slice(&scale(next).to_le_bytes());
        }
        if format == Format::IQ1M {
            // The f16 scale's four nibbles are the top nibbles of the four 16-bit scale words.
            let bits = scale(next).to_bits();
            for k in 0..4 {
                b[49 + 2 * k] = (b[49 + 2 * k] & 0x0F) | ((((bits >> (4 * k)) & 0x0F) as u8) << 4);
            }
        }
        if format == Format::BF16 {
            let v = ((next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 10.0;
            b.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
        }
    }
    data
}

/// The values `tests/reference/dequantize.py` gives for `data`.
fn python_dequantize(ggml_type: u32, data: &[u8]) -> Vec<f32> {
    let dir = std::env::temp_dir().join(format!("candlewick-formats-{}-{ggml_type}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output) = (dir.join("blocks.bin"), dir.join("values.bin"));
    std::fs::write(&input, data).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/dequantize.py");
    let run = Command::new("python3").arg(script).arg(ggml_type.to_string()).arg(&input).arg(&output).output();
    let run = run.unwrap_or_else(|e| panic!("cannot run python3 ({e}): install Python 3, then `pip install gguf`"));
    assert!(run.status.success(), "tests/reference/dequantize.py failed (needs `pip install gguf`): {}", String::from_utf8_lossy(&run.stderr));
    let bytes = std::fs::read(&output).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// `dequantize` gives the `gguf` package's values for every quantized format, exactly (a zero of either sign).
#[test]
fn dequantize_matches_python_gguf() {
    let mut next = xorshift(0x6A09_E667_F3BC_C909);
    for ggml_type in TYPES {
        let format = Format::from_ggml(ggml_type).expect("a block format");
        let (per_block, _) = format.block();
        let blocks = if per_block == 1 { 4096 } else { 24 * 256 / per_block };
        let data = random_blocks(format, blocks, &mut next);
        let mut got = vec![0f32; blocks * per_block];
        dequantize(format, &data, &mut got);
        let want = python_dequantize(ggml_type, &data);
        assert_eq!(got.len(), want.len(), "{format:?}: value counts");
        // Equal as numbers: exactly, except that a zero may differ in sign.
        let differ: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
        if let Some(&i) = differ.first() {
            panic!("{format:?}: {} of {} values differ, first at {i} (block {}): {} vs gguf's {}", differ.len(), got.len(), i / per_block, got[i], want[i]);
        }
        assert!(got.iter().any(|v| *v != 0.0), "{format:?}: all zero");
    }
}

/// Matrices of every format load, read back as their dequantized values, and multiply, bit for
/// bit, as the scalar dot product of each row with the scalar-quantized activations: 37 rows (a
/// partial last parallel task), rows of 7 blocks (IQ1_S's kernel takes blocks in pairs: three
/// and a last one alone), one to three, eight, nine and eleven activation rows (the codebook
/// formats decode a row's blocks once for up to eight activation rows, then again).
#[test]
fn matmul_runs_every_format() {
    use candlewick::kernels::blocks::{dot_scalar, Activations};
    use candlewick::kernels::QMatrix;
    let mut next = xorshift(0xBB67_AE85_84CA_A73B);
    for ggml_type in TYPES {
        let format = Format::from_ggml(ggml_type).expect("a block format");
        let (per_block, size) = format.block();
        let (rows, cols) = (37, 7 * per_block.max(32));
        let data = random_blocks(format, rows * cols / per_block, &mut next);
        let matrix = QMatrix::new(ggml_type, data.clone(), rows, cols).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        // Its values (embedding lookups read them) are the dequantized blocks.
        let mut values = vec![0f32; rows * cols];
        dequantize(format, &data, &mut values);
        let read = matrix.to_f32().expect("a block matrix");
        assert!(read.iter().zip(&values).all(|(a, b)| a.to_bits() == b.to_bits()), "{format:?}: to_f32");
        for m in [1, 2, 3, 8, 9, 11] {
            let x: Vec<f32> = (0..m * cols).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
            let got = matrix.matmul(&x, m).expect("matching shapes");
            for (i, x) in x.chunks_exact(cols).enumerate() {
                let mut act = Activations::default();
                act.quantize_scalar(x, format.act());
                for (r, row) in data.chunks_exact(cols / per_block * size).enumerate() {
                    let want = dot_scalar(format, row, &act);
                    assert_eq!(got[i * rows + r].to_bits(), want.to_bits(), "{format:?} m={m} row {r} of activation row {i}");
                }
            }
        }
    }
}
