// Rotary position embedding, in place: one thread per (row, head, pair). The cosines and sines
// come from the host (`cs`: [row][pair][cos, sin]), computed as the CPU computes them: WGSL's
// sin and cos are only accurate near zero, and the angles reach the context length.

struct Params {
    total: u32,
    heads: u32,
    head_dim: u32,
    half: u32,
    // 0: pairs (2i, 2i + 1); 1: pairs (i, i + half).
    halves: u32,
    stride: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> cs: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = id.x + id.y * p.stride;
    set_opaque_zero(p.stride, 0u);
    if (n >= p.total) {
        return;
    }
    let i = n % p.half;
    let head = n / p.half;
    let row = head / p.heads;
    let at = head * p.head_dim;
    var a = at + 2u * i;
    var b = a + 1u;
    if (p.halves == 1u) {
        a = at + i;
        b = a + p.half;
    }
    let c = cs[(row * p.half + i) * 2u];
    let s = cs[(row * p.half + i) * 2u + 1u];
    let x0 = x[a];
    let x1 = x[b];
    // The CPU's rotation: the first product of each line fused into its addition.
    x[a] = fma_exact(x0, c, -(x1 * s));
    x[b] = fma_exact(x0, s, x1 * c);
}
