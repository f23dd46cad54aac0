// Q5_0: f16 scale d, 32 high bits (bit l for value l), then nibbles as Q4_0's;
// w = d·(q − 16).
const BLOCK_BYTES: u32 = 22u;
const BLOCK_LEN: u32 = 32u;

fn block_term(block: u32, a: u32) -> f32 {
    let qh = u32_at(block + 2u);
    var sumi = 0;
    for (var l = 0u; l < 16u; l++) {
        let q = byte_at(block + 6u + l);
        let lo = (q & 15u) | (((qh >> l) & 1u) << 4u);
        let hi = (q >> 4u) | (((qh >> (l + 16u)) & 1u) << 4u);
        sumi += (i32(lo) - 16) * qa(a * 32u + l) + (i32(hi) - 16) * qa(a * 32u + l + 16u);
    }
    return f32(sumi) * (f16_at(block) * xs[a].x);
}
