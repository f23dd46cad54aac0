// Q4_0: f16 scale d, then 16 bytes: value l in the low nibble of byte l, value l + 16 in its
// high nibble; w = d·(q − 8).
const UNITS: u32 = 1u;
const BLOCK_BYTES: u32 = 18u;

fn unit_dot(block: u32, j: u32, xo: u32) -> f32 {
    var s = 0.0;
    for (var l = 0u; l < 16u; l++) {
        let q = byte_at(block + 2u + l);
        s += f32(i32(q & 15u) - 8) * x[xo + l] + f32(i32(q >> 4u) - 8) * x[xo + l + 16u];
    }
    return f16_at(block) * s;
}
