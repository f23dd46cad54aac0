// What Q4_0, Q4_1, Q5_0 and Q5_1 share: 16 bytes of nibbles, value l in the low nibble of byte
// l and value l + 16 in its high nibble (with, in the Q5 formats, bit l of 32 high bits as the
// fifth bit of value l); w = d·(q − offset) (+ m in Q4_1 and Q5_1, whose offset is 0).

// Σ (q − offset)·a over the block's 32 values: its nibbles at `qs`, activation block `a`, and
// the fifth bits `qh` (0 for the Q4 formats). An exact integer.
fn nibbles_dot(qs: u32, qh: u32, a: u32, offset: i32) -> i32 {
    var sumi = 0;
    for (var l = 0u; l < 16u; l++) {
        let q = byte_at(qs + l);
        let lo = (q & 15u) | (((qh >> l) & 1u) << 4u);
        let hi = (q >> 4u) | (((qh >> (l + 16u)) & 1u) << 4u);
        sumi += (i32(lo) - offset) * qa(a * 32u + l) + (i32(hi) - offset) * qa(a * 32u + l + 16u);
    }
    return sumi;
}
