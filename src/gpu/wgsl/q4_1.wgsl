// Q4_1: f16 scale d and minimum m, then 16 bytes of nibbles as Q4_0's; w = d·q + m.
const UNITS: u32 = 1u;
const BLOCK_BYTES: u32 = 20u;

fn unit_dot(block: u32, j: u32, xo: u32) -> f32 {
    var s = 0.0;
    for (var l = 0u; l < 16u; l++) {
        let q = byte_at(block + 4u + l);
        s += f32(q & 15u) * x[xo + l] + f32(q >> 4u) * x[xo + l + 16u];
    }
    return f16_at(block) * s + f16_at(block + 2u) * sum32(xo);
}
