// Q5_K: d, dmin, 12 scale bytes, 32 bytes of high bits (bit j of byte l for value l of unit
// j), then nibbles as Q4_K's.
const UNITS: u32 = 8u;
const BLOCK_BYTES: u32 = 176u;

fn unit_dot(block: u32, j: u32, xo: u32) -> f32 {
    let sm = scale_min_k4(j, block + 4u);
    let qs = block + 48u + (j / 2u) * 32u;
    let shift = (j % 2u) * 4u;
    var s = 0.0;
    var sx = 0.0;
    for (var l = 0u; l < 32u; l++) {
        let v = x[xo + l];
        let q = ((byte_at(qs + l) >> shift) & 15u) | (((byte_at(block + 16u + l) >> j) & 1u) << 4u);
        s += f32(q) * v;
        sx += v;
    }
    return f16_at(block) * f32(sm.x) * s - f16_at(block + 2u) * f32(sm.y) * sx;
}
