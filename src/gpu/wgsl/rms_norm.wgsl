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
    set_opaque_zero(p.width, 0u);
    let at = g * p.width;
    // The CPU sums the f32 squares in f64 and rounds the mean once to f32: one thread sums
    // them here as a pair of f32s (the sum and its rounding error, Knuth's two-sum), whose
    // mean, corrected once, is that mean but in the rarest cases.
    if (t == 0u) {
        var hi = 0.0;
        var lo = 0.0;
        for (var i = 0u; i < p.width; i++) {
            let v = x[at + i];
            let s = two_sum(hi, v * v);
            lo += s.y;
            hi = s.x;
        }
        let n = f32(p.width);
        var mean = div_exact(hi, n);
        mean += (fma_exact(-mean, n, hi) + lo) / n;
        // 1 / sqrt(mean + eps), each step correctly rounded as the CPU's: the neighbour of
        // WGSL's result (within a few ulp) whose residual is smallest.
        let m = mean + p.eps;
        let root = nearest_sqrt(m);
        partial[0] = nearest_reciprocal(root);
    }
    workgroupBarrier();
    let scale = partial[0];
    for (var i = t; i < p.width; i += WG) {
        x[at + i] = (x[at + i] * scale) * weight[i];
    }
}

// The f32 nearest to √m: of WGSL's sqrt and its neighbours, the one whose square's exact
// difference from m (an fma) is smallest.
fn nearest_sqrt(m: f32) -> f32 {
    var best = sqrt(m);
    var err = abs(fma_exact(best, best, -m));
    let base = bitcast<u32>(best);
    for (var d = 0u; d < 5u; d++) {
        let c = bitcast<f32>(base + d - 2u);
        let e = abs(fma_exact(c, c, -m));
        if (e < err) {
            best = c;
            err = e;
        }
    }
    return best;
}

// The f32 nearest to 1 / r, as nearest_sqrt chooses it.
fn nearest_reciprocal(r: f32) -> f32 {
    var best = 1.0 / r;
    var err = abs(fma_exact(best, r, -1.0));
    let base = bitcast<u32>(best);
    for (var d = 0u; d < 5u; d++) {
        let c = bitcast<f32>(base + d - 2u);
        let e = abs(fma_exact(c, r, -1.0));
        if (e < err) {
            best = c;
            err = e;
        }
    }
    return best;
}
