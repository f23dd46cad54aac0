// Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed 8-bit scales (one per 16
// values), f16 d last; w = d·sc·(q − 32). Each half of 128 values has 64 low bytes and 32
// high bytes; its quarter k takes nibble k / 2 of low byte l + 32·(k % 2) and bits 2k of high
// byte l.
const BLOCK_BYTES: u32 = 210u;
const BLOCK_LEN: u32 = 256u;

fn block_term(block: u32, a: u32) -> f32 {
    var sumi = 0;
    for (var j = 0u; j < 8u; j++) {
        let h = j / 4u;
        let k = j % 4u;
        let ql = block + h * 64u + (k % 2u) * 32u;
        let qh = block + 128u + h * 32u;
        var s = vec2(0, 0);
        for (var l = 0u; l < 32u; l++) {
            let q = ((byte_at(ql + l) >> ((k / 2u) * 4u)) & 15u) | (((byte_at(qh + l) >> (2u * k)) & 3u) << 4u);
            s[l / 16u] += (i32(q) - 32) * qa(a * 256u + j * 32u + l);
        }
        let sc = block + 192u + h * 8u + k * 2u;
        sumi += i8_at(sc) * s.x + i8_at(sc + 1u) * s.y;
    }
    // (d · x.d) · Σ in that order, as the CPU groups it (`opaque`: see kquants.wgsl).
    return opaque(f16_at(block + 208u) * xs[a].x) * f32(sumi);
}
