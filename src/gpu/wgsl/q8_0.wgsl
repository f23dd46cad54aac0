// Q8_0: f16 scale d, then 32 signed bytes; w = d·q.
const UNITS: u32 = 1u;
const BLOCK_BYTES: u32 = 34u;

fn unit_dot(block: u32, j: u32, xo: u32) -> f32 {
    var s = 0.0;
    for (var l = 0u; l < 32u; l++) {
        s += f32(i8_at(block + 2u + l)) * x[xo + l];
    }
    return f16_at(block) * s;
}
