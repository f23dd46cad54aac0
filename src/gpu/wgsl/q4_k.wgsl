// Q4_K: d, dmin, 12 scale bytes, then 128 bytes: units 2c and 2c + 1 are the low and high
// nibbles of bytes 32c .. 32c + 32.
const UNITS: u32 = 8u;
const BLOCK_BYTES: u32 = 144u;

fn unit_dot(block: u32, j: u32, xo: u32) -> f32 {
    let sm = scale_min_k4(j, block + 4u);
    let qs = block + 16u + (j / 2u) * 32u;
    let shift = (j % 2u) * 4u;
    var s = 0.0;
    var sx = 0.0;
    for (var l = 0u; l < 32u; l++) {
        let v = x[xo + l];
        s += f32((byte_at(qs + l) >> shift) & 15u) * v;
        sx += v;
    }
    return f16_at(block) * f32(sm.x) * s - f16_at(block + 2u) * f32(sm.y) * sx;
}
