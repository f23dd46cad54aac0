// Q5_1: f16 scale d and minimum m, 32 high bits, then nibbles (`nibbles.wgsl`); w = d·q + m.
const BLOCK_BYTES: u32 = 24u;
const BLOCK_LEN: u32 = 32u;

fn block_term(block: u32, a: u32) -> f32 {
    return f32(nibbles_dot(block + 8u, u32_at(block + 4u), a, 0)) * (f16_at(block) * xs[a].x) + f16_at(block + 2u) * xs[a].y;
}
