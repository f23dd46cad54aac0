// Q5_0: f16 scale d, 32 high bits (bit l for value l), then nibbles (`nibbles.wgsl`);
// w = d·(q − 16).
const BLOCK_BYTES: u32 = 22u;
const BLOCK_LEN: u32 = 32u;

fn block_term(block: u32, a: u32) -> f32 {
    return f32(nibbles_dot(block + 6u, u32_at(block + 2u), a, 16)) * (f16_at(block) * xs[a].x);
}
