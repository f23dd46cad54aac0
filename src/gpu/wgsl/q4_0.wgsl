// Q4_0: f16 scale d, then 16 bytes: value l in the low nibble of byte l, value l + 16 in its
// high nibble; w = d·(q − 8).
const BLOCK_BYTES: u32 = 18u;
const BLOCK_LEN: u32 = 32u;

fn block_term(block: u32, a: u32) -> f32 {
    var sumi = 0;
    for (var l = 0u; l < 16u; l++) {
        let q = byte_at(block + 2u + l);
        sumi += (i32(q & 15u) - 8) * qa(a * 32u + l) + (i32(q >> 4u) - 8) * qa(a * 32u + l + 16u);
    }
    return f32(sumi) * (f16_at(block) * xs[a].x);
}
