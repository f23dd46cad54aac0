// Q5_1: f16 scale d and minimum m, 32 high bits, then nibbles as Q4_0's; w = d·q + m.
const UNITS: u32 = 1u;
const BLOCK_BYTES: u32 = 24u;

fn unit_dot(block: u32, j: u32, xo: u32) -> f32 {
    let qh = u32_at(block + 4u);
    var s = 0.0;
    for (var l = 0u; l < 16u; l++) {
        let q = byte_at(block + 8u + l);
        let lo = (q & 15u) | (((qh >> l) & 1u) << 4u);
        let hi = (q >> 4u) | (((qh >> (l + 16u)) & 1u) << 4u);
        s += f32(lo) * x[xo + l] + f32(hi) * x[xo + l + 16u];
    }
    return f16_at(block) * s + f16_at(block + 2u) * sum32(xo);
}
