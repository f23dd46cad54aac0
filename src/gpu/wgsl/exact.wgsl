// f32 arithmetic that gives the CPU's bits whatever the shader compiler does with a multiply
// and an add. WGSL's `fma` may be fused or not (Vulkan's precision for it is that of a
// multiply followed by an add: Mesa's lavapipe does not fuse it), and its `exp` is only
// accurate to a few ulp; the CPU's are a fused multiply-add and e^x computed in f64 and
// rounded once (`arch::math`). Here both are built from operations every implementation
// rounds correctly (additions, and products that are exact), so the results are the correctly
// rounded ones, as the CPU's are. Subnormal intermediates (a GPU may flush them) are outside
// this promise; they do not arise in a forward pass's values that matter.

// Compilers may simplify f32 expressions as if they were real numbers (Mesa's NIR turns
// (a + b) − a into b unless the shader marks it exact, which WGSL cannot): the error terms
// below would vanish. `opaque` hides a value behind an exclusive or with a zero the compiler
// cannot know (`opaque_zero`, which each entry point sets from a uniform with
// `set_opaque_zero` before using anything here).
var<private> opaque_zero: u32;

// `never` is a value the shader never holds: the compiler cannot know that the result is 0.
fn set_opaque_zero(runtime: u32, never: u32) {
    opaque_zero = u32(runtime == never);
}

fn opaque(v: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(v) ^ opaque_zero);
}

// a + b as (s, e): s = a + b rounded, e its exact error (Knuth's two-sum; additions only).
fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opaque(a + b);
    let bb = opaque(s - a);
    return vec2(s, (a - (s - bb)) + (b - bb));
}

// a · b as (p, e): p = a · b rounded, e its exact error (Dekker's product). The halves are
// cut by masking the significand, so each has at most 12 bits and each partial product is
// exact: a fused multiply-add anywhere here changes nothing.
fn two_prod(a: f32, b: f32) -> vec2<f32> {
    let p = opaque(a * b);
    let ah = bitcast<f32>(bitcast<u32>(a) & 0xfffff000u);
    let al = a - ah;
    let bh = bitcast<f32>(bitcast<u32>(b) & 0xfffff000u);
    let bl = b - bh;
    let e = (((ah * bh - p) + ah * bl) + al * bh) + al * bl;
    return vec2(p, e);
}

// a + b rounded to odd: the neighbour of the exact sum whose last bit is 1, unless the sum is
// exact.
fn add_odd(a: f32, b: f32) -> f32 {
    let s = two_sum(a, b);
    let bits = bitcast<u32>(s.x);
    if (s.y == 0.0 || (bits & 1u) == 1u) {
        return s.x;
    }
    // Toward the exact sum: one step up in magnitude if the error has the sum's sign.
    if ((s.y > 0.0) == (s.x > 0.0)) {
        return bitcast<f32>(bits + 1u);
    }
    return bitcast<f32>(bits - 1u);
}

// a + b + c rounded once (Boldo and Melquiond's sum of three with a rounding to odd, IEEE
// Transactions on Computers 57(4), 2008): exact two-sums, then the small parts added with
// rounding to odd, so the last rounding to nearest cannot round twice.
fn sum3(a: f32, b: f32, c: f32) -> f32 {
    let u = two_sum(b, c);
    let t = two_sum(a, u.x);
    return t.x + add_odd(t.y, u.y);
}

// a · b + c rounded once, as the CPU's fused multiply-add (a · b is exactly p + e).
fn fma_exact(a: f32, b: f32, c: f32) -> f32 {
    let p = two_prod(a, b);
    return sum3(c, p.x, p.y);
}

// 2^(j/64) for j in 0..64, each as (high, low) f32 bits: high + low within 2⁻⁴⁸ of it.
const EXP2_TABLE = array<vec2<u32>, 64>(
    vec2<u32>(0x3f800000u, 0x00000000u),
    vec2<u32>(0x3f8164d2u, 0xb1c43fd0u),
    vec2<u32>(0x3f82cd87u, 0xb34ea7a9u),
    vec2<u32>(0x3f843a29u, 0xb2f14c87u),
    vec2<u32>(0x3f85aac3u, 0x334f9891u),
    vec2<u32>(0x3f871f62u, 0xb352c2e6u),
    vec2<u32>(0x3f88980fu, 0xb37eda4bu),
    vec2<u32>(0x3f8a14d5u, 0x336a92deu),
    vec2<u32>(0x3f8b95c2u, 0xb260aba1u),
    vec2<u32>(0x3f8d1adfu, 0x3336fcb7u),
    vec2<u32>(0x3f8ea43au, 0xb3697465u),
    vec2<u32>(0x3f9031dcu, 0x330628cdu),
    vec2<u32>(0x3f91c3d3u, 0x33675624u),
    vec2<u32>(0x3f935a2bu, 0x32bc4f9cu),
    vec2<u32>(0x3f94f4f0u, 0xb32e0212u),
    vec2<u32>(0x3f96942du, 0x32dc8061u),
    vec2<u32>(0x3f9837f0u, 0x33231b71u),
    vec2<u32>(0x3f99e046u, 0xb359be90u),
    vec2<u32>(0x3f9b8d3au, 0xb30c5563u),
    vec2<u32>(0x3f9d3edau, 0xb331a601u),
    vec2<u32>(0x3f9ef532u, 0x33412342u),
    vec2<u32>(0x3fa0b051u, 0x31fb9715u),
    vec2<u32>(0x3fa27043u, 0x30c3125au),
    vec2<u32>(0x3fa43516u, 0xb323ec33u),
    vec2<u32>(0x3fa5fed7u, 0xb32c9d5eu),
    vec2<u32>(0x3fa7cd94u, 0xb3162d36u),
    vec2<u32>(0x3fa9a15bu, 0xb3162b08u),
    vec2<u32>(0x3fab7a3au, 0xb314ad82u),
    vec2<u32>(0x3fad583fu, 0xb22deaf6u),
    vec2<u32>(0x3faf3b79u, 0xb3252debu),
    vec2<u32>(0x3fb123f6u, 0xb37c5aa8u),
    vec2<u32>(0x3fb311c4u, 0x32154889u),
    vec2<u32>(0x3fb504f3u, 0x32cfe77au),
    vec2<u32>(0x3fb6fd92u, 0xb266b974u),
    vec2<u32>(0x3fb8fbafu, 0x330ec5f7u),
    vec2<u32>(0x3fbaff5bu, 0xb31bd983u),
    vec2<u32>(0x3fbd08a4u, 0xb3414fe8u),
    vec2<u32>(0x3fbf179au, 0xb3130b1au),
    vec2<u32>(0x3fc12c4du, 0xb2d6663eu),
    vec2<u32>(0x3fc346cdu, 0xb2976da2u),
    vec2<u32>(0x3fc5672au, 0x320aa837u),
    vec2<u32>(0x3fc78d75u, 0xb2dd5119u),
    vec2<u32>(0x3fc9b9beu, 0xb37323a2u),
    vec2<u32>(0x3fcbec15u, 0xb006c6c2u),
    vec2<u32>(0x3fce248cu, 0x3228fc24u),
    vec2<u32>(0x3fd06334u, 0xb2944353u),
    vec2<u32>(0x3fd2a81eu, 0xb35c1daau),
    vec2<u32>(0x3fd4f35bu, 0xb3286024u),
    vec2<u32>(0x3fd744fdu, 0xb2d4a58au),
    vec2<u32>(0x3fd99d16u, 0xb2f61d41u),
    vec2<u32>(0x3fdbfbb8u, 0xb3504a1cu),
    vec2<u32>(0x3fde60f5u, 0xb37b43e3u),
    vec2<u32>(0x3fe0ccdfu, 0xb21eab59u),
    vec2<u32>(0x3fe33f89u, 0x33657d15u),
    vec2<u32>(0x3fe5b907u, 0xb2441be6u),
    vec2<u32>(0x3fe8396au, 0x33207898u),
    vec2<u32>(0x3feac0c7u, 0xb24116deu),
    vec2<u32>(0x3fed4f30u, 0x3276cca1u),
    vec2<u32>(0x3fefe4bau, 0xb348464au),
    vec2<u32>(0x3ff28177u, 0x32f167ffu),
    vec2<u32>(0x3ff5257du, 0x32292436u),
    vec2<u32>(0x3ff7d0dfu, 0x336615a2u),
    vec2<u32>(0x3ffa83b3u, 0xb2923758u),
    vec2<u32>(0x3ffd3e0cu, 0x31cf486cu)
);

// e^x rounded once to f32, as the CPU's (f64 e^x rounded to f32): x = (64m + j)·ln 2/64 + r
// with |r| ≤ ln 2/128, e^x = 2^m · 2^(j/64) · e^r, every part carried as a pair of f32s (a
// value and its error) to some 2⁻⁴⁵ of the result, then rounded once. The one result in
// some 10⁷ that lies that close to a rounding boundary may round the other way.
fn exp_exact(x: f32) -> f32 {
    if (x != x) {
        return x;
    }
    if (x > 88.72284) {
        // (Not a constant: WGSL refuses a constant infinity.)
        return bitcast<f32>(0x7f800000u ^ opaque_zero);
    }
    if (x < -103.97208) {
        return 0.0;
    }
    // k = round(x · 64/ln 2); r = x − k·ln 2/64, with ln 2/64 in three parts: the first of 8
    // bits (k·it exact, and x minus it exact), the next two with their products' errors.
    let k = round(x * bitcast<f32>(0x42b8aa3bu));
    let r1 = x - k * bitcast<f32>(0x3c310000u);
    let m1 = two_prod(k, bitcast<f32>(0x37e42ff0u));
    let r = two_sum(r1, -m1.x);
    let rl = r.y - m1.y - k * bitcast<f32>(0xab38c219u);
    // e^r − 1 = r + r²/2 + r³/6 + r⁴/24 + r⁵/120 (the next term is under 2⁻⁵⁴).
    let q = two_prod(r.x, r.x);
    let ql = q.y + 2.0 * r.x * rl;
    let tail = q.x * r.x * (bitcast<f32>(0x3e2aaaabu) + r.x * (bitcast<f32>(0x3d2aaaabu) + r.x * bitcast<f32>(0x3c088889u)));
    let e = two_sum(r.x, 0.5 * q.x);
    let el = e.y + (rl + (0.5 * ql + tail));
    // 2^(j/64) · (1 + e): T + T·e, with T·e's error and T's low part.
    let ki = i32(k);
    let j = u32(ki & 63);
    let m = ki >> 6u;
    let t = EXP2_TABLE[j];
    let th = bitcast<f32>(t.x);
    let tl = bitcast<f32>(t.y);
    let p = two_prod(th, e.x);
    let s = two_sum(th, p.x);
    let low = s.y + (p.y + (th * el + tl * (1.0 + e.x)));
    let v = s.x + low;
    // Times 2^m: exact for a normal result. Below 2⁻¹²⁶ the pair is rounded once to the
    // subnormals' grid (multiples of 2⁻¹⁴⁹): scaled by 2¹⁴⁹, to an integer, as the sum with
    // 2²³ rounds it.
    if (m < -126 || (m == -126 && v < 1.0)) {
        let up = bitcast<f32>(u32(m + 149 + 127) << 23u);
        let big = opaque(8388608.0);
        let n = sum3(big, s.x * up, low * up) - big;
        return n * bitcast<f32>(0x34000000u) * bitcast<f32>(0x00800000u);
    }
    if (m > 127) {
        return v * 2.0 * bitcast<f32>(u32(m - 1 + 127) << 23u);
    }
    return v * bitcast<f32>(u32(m + 127) << 23u);
}

// a / b rounded to nearest, as the CPU divides: WebGPU lets a division be 2.5 ulp off (and
// SwiftShader's is), so of the quotient and its two neighbours either side, the one whose
// exact residual a − c·b is smallest.
fn div_exact(a: f32, b: f32) -> f32 {
    let q = a / b;
    var best = q;
    var err = abs(fma_exact(-q, b, a));
    let base = bitcast<u32>(q);
    for (var d = 0u; d < 5u; d++) {
        let c = bitcast<f32>(base + d - 2u);
        let e = abs(fma_exact(-c, b, a));
        if (e < err) {
            best = c;
            err = e;
        }
    }
    return best;
}
