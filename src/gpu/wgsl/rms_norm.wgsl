// RMS norm of each `width`-wide group of x (a row, or a head of it), times the weight, in
// place: one workgroup per group.

struct Params {
    groups: u32,
    width: u32,
    eps: f32,
    groups_x: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let g = group.x + group.y * p.groups_x;
    if (g >= p.groups) {
        return;
    }
    let at = g * p.width;
    var sum = 0.0;
    for (var i = t; i < p.width; i += WG) {
        let v = x[at + i];
        sum += v * v;
    }
    partial[t] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            partial[t] += partial[t + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(partial[0] / f32(p.width) + p.eps);
    for (var i = t; i < p.width; i += WG) {
        x[at + i] = (x[at + i] * scale) * weight[i];
    }
}
