// Q4_0: f16 scale d, then 16 bytes of nibbles (`nibbles.wgsl`); w = d·(q − 8).
const BLOCK_BYTES: u32 = 18u;
const BLOCK_LEN: u32 = 32u;

fn block_term(block: u32, a: u32) -> f32 {
    return f32(nibbles_dot(block + 2u, 0u, a, 8)) * (f16_at(block) * xs[a].x);
}
