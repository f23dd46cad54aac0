// Q4_1: f16 scale d and minimum m, then 16 bytes of nibbles as Q4_0's; w = d·q + m. The
// minimum meets the activations' f16-rounded d·Σq (Q8_1's s).
const BLOCK_BYTES: u32 = 20u;
const BLOCK_LEN: u32 = 32u;

fn block_term(block: u32, a: u32) -> f32 {
    var sumi = 0;
    for (var l = 0u; l < 16u; l++) {
        let q = byte_at(block + 4u + l);
        sumi += i32(q & 15u) * qa(a * 32u + l) + i32(q >> 4u) * qa(a * 32u + l + 16u);
    }
    return f32(sumi) * (f16_at(block) * xs[a].x) + f16_at(block + 2u) * xs[a].y;
}
