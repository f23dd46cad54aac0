// `v` rounded to the nearest f16 (ties to even), as an f32: the CPU's f16 conversions
// (`half`'s, the hardware's), for values in f16's normal range; smaller ones are rounded as if
// f16 had more exponent range (an activation block or a cache value that small is rare and
// changes nothing that matters). WGSL's pack2x16float does not promise a rounding mode.
fn round_f16(v: f32) -> f32 {
    let b = bitcast<u32>(v);
    let lsb = (b >> 13u) & 1u;
    return bitcast<f32>((b + 0x0fffu + lsb) & 0xffffe000u);
}
