// Element-by-element operations, one thread per value of x, selected by `op`:
//   0  x += y[i % y_len]            (residuals; a bias added to each row)
//   1  x *= by
//   2  x = silu(x) · y              (x the gate, y up)
//   3  x = gelu_tanh(x) · y
//   4  x = x rounded to f16

struct Params {
    total: u32,
    op: u32,
    y_len: u32,
    by: f32,
    stride: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * p.stride;
    set_opaque_zero(p.stride, 0u);
    if (i >= p.total) {
        return;
    }
    let v = x[i];
    switch p.op {
        case 0u: {
            x[i] = v + y[i % p.y_len];
        }
        case 1u: {
            x[i] = v * p.by;
        }
        case 2u: {
            x[i] = div_exact(v, 1.0 + exp_exact(-v)) * y[i];
        }
        case 4u: {
            x[i] = round_f16(v);
        }
        default: {
            // As the CPU reads llama.cpp's table: the input and the result rounded to f16.
            var g = v;
            if (v <= -10.0) {
                g = 0.0;
            } else if (v < 10.0) {
                let h = round_f16(v);
                g = round_f16(0.5 * h * (1.0 + tanh_near(0.7978846 * h * (1.0 + 0.044715 * h * h))));
            }
            x[i] = g * y[i];
        }
    }
}

// tanh(y) = (e^2y − 1) / (e^2y + 1), within a few ulp of 1 (WGSL's tanh promises nothing
// on some implementations): what GELU adds it to is rounded to f16.
fn tanh_near(y: f32) -> f32 {
    let e = exp_exact(2.0 * min(abs(y), 20.0));
    return sign(y) * div_exact(e - 1.0, e + 1.0);
}
