// Each block of x quantized as llama.cpp's CPU code quantizes activations before a product
// (`kernels::blocks`, `Activations::quantize_scalar`): its 8-bit values (as f32, exactly) in
// `xq`, its (d, s) in `xs`. One thread per block.
//   kind 0: Q8_0 / Q8_1, blocks of 32: q = round(x · 127 / amax), d = f16(amax / 127),
//           s = f16((amax / 127) · Σq) (Q8_1's; Q8_0's products do not read it)
//   kind 1: Q8_K, blocks of 256: the value of largest magnitude (the first of equals) m,
//           q = min(127, round(x · −127 / m)), d = 1 / (−127 / m)
// WGSL's round() rounds half to even, as the CPU's does; the divisions are exact.wgsl's,
// correctly rounded as the CPU's (WebGPU's own may be 2.5 ulp off).

struct Params {
    blocks: u32,
    kind: u32,
    stride: u32,
}

@group(0) @binding(0) var<storage, read_write> xq: array<f32>;
@group(0) @binding(1) var<storage, read_write> xs: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    set_opaque_zero(p.stride, 0u);
    let block = id.x + id.y * p.stride;
    if (block >= p.blocks) {
        return;
    }
    if (p.kind == 0u) {
        let at = block * 32u;
        var amax = 0.0;
        for (var i = 0u; i < 32u; i++) {
            amax = max(amax, abs(x[at + i]));
        }
        let d = div_exact(amax, 127.0);
        var id = 0.0;
        if (amax != 0.0) {
            id = div_exact(127.0, amax);
        }
        var sum = 0.0;
        for (var i = 0u; i < 32u; i++) {
            let q = round(x[at + i] * id);
            xq[at + i] = q;
            sum += q;
        }
        xs[block] = vec2(round_f16(d), round_f16(d * sum));
    } else {
        let at = block * 256u;
        var m = 0.0;
        var amax = 0.0;
        for (var i = 0u; i < 256u; i++) {
            let v = x[at + i];
            if (abs(v) > amax) {
                amax = abs(v);
                m = v;
            }
        }
        if (amax == 0.0) {
            for (var i = 0u; i < 256u; i++) {
                xq[at + i] = 0.0;
            }
            xs[block] = vec2(0.0, 0.0);
            return;
        }
        let iscale = div_exact(-127.0, m);
        for (var i = 0u; i < 256u; i++) {
            xq[at + i] = min(127.0, round(iscale * x[at + i]));
        }
        xs[block] = vec2(div_exact(1.0, iscale), 0.0);
    }
}
