// What Q4_K and Q5_K share: a super-block of 256 values in 8 units of 32, f16 d and dmin, and
// 12 bytes of 6-bit scales and minimums; w = d·sc_j·q − dmin·m_j.

// The 6-bit (scale, minimum) of unit `j` from the 12 bytes at `at`.
fn scale_min_k4(j: u32, at: u32) -> vec2<u32> {
    if (j < 4u) {
        return vec2(byte_at(at + j) & 63u, byte_at(at + j + 4u) & 63u);
    }
    let lo = byte_at(at + j + 4u);
    return vec2((lo & 15u) | ((byte_at(at + j - 4u) >> 6u) << 4u), (lo >> 4u) | ((byte_at(at + j) >> 6u) << 4u));
}
