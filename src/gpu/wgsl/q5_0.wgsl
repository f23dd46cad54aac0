// Q5_0: f16 scale d, 32 high bits (bit l for value l), then nibbles as Q4_0's;
// w = d·(q − 16).
const UNITS: u32 = 1u;
const BLOCK_BYTES: u32 = 22u;

fn unit_dot(block: u32, j: u32, xo: u32) -> f32 {
    let qh = u32_at(block + 2u);
    var s = 0.0;
    for (var l = 0u; l < 16u; l++) {
        let q = byte_at(block + 6u + l);
        let lo = (q & 15u) | (((qh >> l) & 1u) << 4u);
        let hi = (q >> 4u) | (((qh >> (l + 16u)) & 1u) << 4u);
        s += f32(i32(lo) - 16) * x[xo + l] + f32(i32(hi) - 16) * x[xo + l + 16u];
    }
    return f16_at(block) * s;
}
