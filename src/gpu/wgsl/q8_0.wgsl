// Q8_0: f16 scale d, then 32 signed bytes; w = d·q.
const BLOCK_BYTES: u32 = 34u;
const BLOCK_LEN: u32 = 32u;

fn block_term(block: u32, a: u32) -> f32 {
    var sumi = 0;
    for (var l = 0u; l < 32u; l++) {
        sumi += i8_at(block + 2u + l) * qa(a * 32u + l);
    }
    return f32(sumi) * (f16_at(block) * xs[a].x);
}
