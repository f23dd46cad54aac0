// What Q4_K and Q5_K share: a super-block of 256 values in 8 sub-blocks of 32, f16 d and dmin,
// and 12 bytes of 6-bit scales and minimums; w = d·sc_j·q − dmin·m_j.

// The 6-bit (scale, minimum) of sub-block `j` from the 12 bytes at `at`.
fn scale_min_k4(j: u32, at: u32) -> vec2<i32> {
    if (j < 4u) {
        return vec2(i32(byte_at(at + j) & 63u), i32(byte_at(at + j + 4u) & 63u));
    }
    let lo = byte_at(at + j + 4u);
    return vec2(i32((lo & 15u) | ((byte_at(at + j - 4u) >> 6u) << 4u)), i32((lo >> 4u) | ((byte_at(at + j) >> 6u) << 4u)));
}

// d·Σ sc_j·(q·a) − dmin·Σ m_j·Σa over the super-block, q of sub-block j from `quant(j, l)`.
fn kquant_term(block: u32, a: u32, high_bits: bool) -> f32 {
    var sumi = 0;
    var summ = 0;
    let qs = block + select(16u, 48u, high_bits);
    for (var j = 0u; j < 8u; j++) {
        let sm = scale_min_k4(j, block + 4u);
        let bytes = qs + (j / 2u) * 32u;
        let shift = (j % 2u) * 4u;
        var s = 0;
        var sa = 0;
        for (var l = 0u; l < 32u; l++) {
            var q = (byte_at(bytes + l) >> shift) & 15u;
            if (high_bits) {
                q |= ((byte_at(block + 16u + l) >> j) & 1u) << 4u;
            }
            let v = qa(a * 256u + j * 32u + l);
            s += i32(q) * v;
            sa += v;
        }
        sumi += sm.x * s;
        summ += sm.y * sa;
    }
    // Each product rounded on its own, as the CPU rounds it: `opaque` keeps a compiler from
    // fusing one into the subtraction (SwiftShader did) or regrouping the products.
    let d = opaque(f16_at(block) * xs[a].x);
    let dmin = opaque(f16_at(block + 2u) * xs[a].x);
    return opaque(d * f32(sumi)) - opaque(dmin * f32(summ));
}
