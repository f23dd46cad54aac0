// Q4_K: d, dmin, 12 scale bytes, then 128 bytes: sub-blocks 2c and 2c + 1 are the low and
// high nibbles of bytes 32c .. 32c + 32.
const BLOCK_BYTES: u32 = 144u;
const BLOCK_LEN: u32 = 256u;

fn block_term(block: u32, a: u32) -> f32 {
    return kquant_term(block, a, false);
}
