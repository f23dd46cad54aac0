// Q4_1: f16 scale d and minimum m, then 16 bytes of nibbles (`nibbles.wgsl`); w = d·q + m. The
// minimum meets the activations' f16-rounded d·Σq (Q8_1's s).
const BLOCK_BYTES: u32 = 20u;
const BLOCK_LEN: u32 = 32u;

fn block_term(block: u32, a: u32) -> f32 {
    return f32(nibbles_dot(block + 4u, 0u, a, 0)) * (f16_at(block) * xs[a].x) + f16_at(block + 2u) * xs[a].y;
}
