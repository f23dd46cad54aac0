// Copies a `width`-wide part of each group of `from` into a part of each group of `to`: group
// g of `to` takes group g / divide of `from` (the split and join of fused projections and
// latent attention; appending to the KV cache, whose values are rounded to f16 as the CPU
// stores them when `to_f16` is 1). One thread per value copied.

struct Params {
    total: u32,
    width: u32,
    from_width: u32,
    from_at: u32,
    divide: u32,
    to_width: u32,
    to_at: u32,
    to_f16: u32,
    stride: u32,
}

@group(0) @binding(0) var<storage, read_write> copy_to: array<f32>;
@group(0) @binding(1) var<storage, read> copy_from: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = id.x + id.y * p.stride;
    if (n >= p.total) {
        return;
    }
    let g = n / p.width;
    let j = n % p.width;
    var v = copy_from[(g / p.divide) * p.from_width + p.from_at + j];
    if (p.to_f16 == 1u) {
        v = round_f16(v);
    }
    copy_to[g * p.to_width + p.to_at + j] = v;
}
