// Q5_1: f16 scale d and minimum m, 32 high bits, then nibbles as Q4_0's; w = d·q + m.
const BLOCK_BYTES: u32 = 24u;
const BLOCK_LEN: u32 = 32u;

fn block_term(block: u32, a: u32) -> f32 {
    let qh = u32_at(block + 4u);
    var sumi = 0;
    for (var l = 0u; l < 16u; l++) {
        let q = byte_at(block + 8u + l);
        let lo = (q & 15u) | (((qh >> l) & 1u) << 4u);
        let hi = (q >> 4u) | (((qh >> (l + 16u)) & 1u) << 4u);
        sumi += i32(lo) * qa(a * 32u + l) + i32(hi) * qa(a * 32u + l + 16u);
    }
    return f32(sumi) * (f16_at(block) * xs[a].x) + f16_at(block + 2u) * xs[a].y;
}
