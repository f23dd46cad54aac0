// exact.wgsl's functions and WGSL's own beside them, for `gpu::check`: o = [fma_exact, fma,
// exp_exact, exp], each as long as the inputs.

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> c: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = arrayLength(&a);
    set_opaque_zero(n, 0u);
    let i = id.x + id.y * 65536u;
    if (i >= n) {
        return;
    }
    o[i] = fma_exact(a[i], b[i], c[i]);
    o[n + i] = fma(a[i], b[i], c[i]);
    o[2u * n + i] = exp_exact(x[i]);
    o[3u * n + i] = exp(x[i]);
}
