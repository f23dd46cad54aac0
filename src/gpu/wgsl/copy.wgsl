// Copies a `width`-wide part of each group of `from` into a part of each group of `to`: group
// g of `to` takes group g / divide of `from` (the split and join of fused projections and
// latent attention). One thread per value copied.

struct Params {
    total: u32,
    width: u32,
    from_width: u32,
    from_at: u32,
    divide: u32,
    to_width: u32,
    to_at: u32,
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
    copy_to[g * p.to_width + p.to_at + j] = copy_from[(g / p.divide) * p.from_width + p.from_at + j];
}
