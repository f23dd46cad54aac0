// `v` rounded to the nearest f16 (ties to even), as an f32: the CPU's f16 conversions
// (`half`'s, the hardware's), subnormal f16s included (multiples of 2⁻²⁴ below 2⁻¹⁴); values
// beyond f16's largest (65504) are kept rather than made infinite. WGSL's pack2x16float does
// not promise a rounding mode.
fn round_f16(v: f32) -> f32 {
    if (abs(v) < 6.103515625e-05) {
        // v · 2²⁴ and the product back are exact; round() rounds half to even.
        return round(v * 16777216.0) * 5.9604644775390625e-08;
    }
    let b = bitcast<u32>(v);
    let lsb = (b >> 13u) & 1u;
    return bitcast<f32>((b + 0x0fffu + lsb) & 0xffffe000u);
}
