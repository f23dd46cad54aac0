// Q5_K: d, dmin, 12 scale bytes, 32 bytes of high bits (bit j of byte l for value l of
// sub-block j), then nibbles as Q4_K's.
const BLOCK_BYTES: u32 = 176u;
const BLOCK_LEN: u32 = 256u;

fn block_term(block: u32, a: u32) -> f32 {
    return kquant_term(block, a, true);
}
