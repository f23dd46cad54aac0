// Causal attention of each (query row, head) over the KV cache, one workgroup each: the scores
// (scaled query·key products), their softmax, and the probabilities' sum of the values, in
// one of the CPU's two orders (`arch::attention`):
//   flash 1: llama.cpp's flash attention: an online softmax over the keys in order, whose
//            value accumulator is rounded to f16 after every update (each thread one value
//            dimension, every thread the same sequence of maxima and sums);
//   flash 0: the softmax of all scores, then the probabilities' sum of the values.
// The cache is [position][kv head][dim] f32 (values already rounded to f16); `scores` is
// scratch, [row][head][capacity].

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    value_dim: u32,
    // The first query row's position.
    pos: u32,
    // Positions filled in the cache (this batch's included).
    len: u32,
    // Keys further back than this are not attended to (0: no window).
    window: u32,
    scale: f32,
    capacity: u32,
    groups: u32,
    groups_x: u32,
    flash: u32,
}

@group(0) @binding(0) var<storage, read_write> scores: array<f32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> keys: array<f32>;
@group(0) @binding(3) var<storage, read> values: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

// The query at `qa` times the key at `ka`, summed as the CPU sums it (`dot_lanes`: llama.cpp's
// 512-bit f16 kernel's order): 64-wide steps into 64 lanes, folded (0 + 2) + (1 + 3) into 16,
// then in halves; a tail past the last full step added after (in f64 on the CPU).
fn score(qa: u32, ka: u32) -> f32 {
    var acc: array<f32, 64>;
    let full = p.head_dim / 64u * 64u;
    for (var s = 0u; s < full; s += 64u) {
        for (var i = 0u; i < 64u; i++) {
            // f16 times f16 is exact in f32: fused or not, this is the CPU's fused sum.
            acc[i] = fma(q[qa + s + i], keys[ka + s + i], acc[i]);
        }
    }
    var lanes: array<f32, 16>;
    for (var l = 0u; l < 16u; l++) {
        lanes[l] = acc[l] + acc[32u + l];
        lanes[l] += acc[16u + l] + acc[48u + l];
    }
    for (var width = 8u; width > 0u; width /= 2u) {
        for (var l = 0u; l < width; l++) {
            lanes[l] += lanes[l + width];
        }
    }
    var sum = lanes[0];
    for (var i = full; i < p.head_dim; i++) {
        sum += q[qa + i] * keys[ka + i];
    }
    return sum;
}

fn visible(at: u32, key: u32) -> bool {
    return p.window == 0u || at - key < p.window;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let g = group.x + group.y * p.groups_x;
    set_opaque_zero(p.groups_x, 0u);
    if (g >= p.groups) {
        return;
    }
    let row = g / p.heads;
    let h = g % p.heads;
    let kv = h / (p.heads / p.kv_heads);
    let at = p.pos + row;
    let last = min(at, p.len - 1u);
    let qa = g * p.head_dim;
    let sa = g * p.capacity;

    // The scores, and their maximum.
    var m = -3.4e38;
    for (var k = t; k <= last; k += WG) {
        if (visible(at, k)) {
            let s = score(qa, (k * p.kv_heads + kv) * p.head_dim) * p.scale;
            scores[sa + k] = s;
            m = max(m, s);
        }
    }
    partial[t] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            partial[t] = max(partial[t], partial[t + s]);
        }
        workgroupBarrier();
    }
    let max_score = partial[0];
    workgroupBarrier();

    if (p.flash == 1u) {
        // The scores written above by other threads.
        storageBarrier();
        for (var d = t; d < p.value_dim; d += WG) {
            var running = -3.4e38;
            var sum = 0.0;
            var acc = 0.0;
            for (var k = 0u; k <= last; k++) {
                if (!visible(at, k)) {
                    continue;
                }
                let score = scores[sa + k];
                var old_scale = 1.0;
                var weight = 1.0;
                if (score > running) {
                    old_scale = exp_exact(running - score);
                    running = score;
                    acc = round_f16(acc * old_scale);
                } else {
                    weight = exp_exact(score - running);
                }
                acc = round_f16(fma_exact(values[(k * p.kv_heads + kv) * p.value_dim + d], weight, acc));
                sum = sum * old_scale + weight;
            }
            var inv = 0.0;
            if (sum != 0.0) {
                inv = div_exact(1.0, sum);
            }
            out[g * p.value_dim + d] = acc * inv;
        }
        return;
    }

    // exp(score − max), and their sum.
    var sum = 0.0;
    for (var k = t; k <= last; k += WG) {
        var e = 0.0;
        if (visible(at, k)) {
            e = exp_exact(scores[sa + k] - max_score);
        }
        scores[sa + k] = e;
        sum += e;
    }
    partial[t] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            partial[t] += partial[t + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / partial[0];
    // The probabilities written above by other threads.
    storageBarrier();

    for (var d = t; d < p.value_dim; d += WG) {
        var acc = 0.0;
        for (var k = 0u; k <= last; k++) {
            acc += scores[sa + k] * values[(k * p.kv_heads + kv) * p.value_dim + d];
        }
        out[g * p.value_dim + d] = acc * inv;
    }
}
