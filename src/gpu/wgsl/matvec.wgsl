// y = W·x̂ for a matrix of GGUF blocks and activations quantized as the CPU quantizes them
// (`quantize.wgsl`): one thread per weight row and activation row, in the CPU's arithmetic
// (`kernels::blocks::dot_scalar`): each block's sum of 8-bit products is an exact integer,
// scaled in f32 as the CPU scales it, and the blocks' terms are added in block order, as the
// CPU adds them. The products are then the CPU's to the bit: where a compiler could fuse or
// regroup a block's products (a K-quant's `d·Σ − dmin·Σ`, which SwiftShader fused), or fuse a
// term's last product into the row's sum, they pass through exact.wgsl's `opaque`.
//
// A thread per row, not a workgroup: a row has few blocks (18 to 152 in the models the GPU
// runs), and a software GPU pays for each workgroup (its launch, the zeroing of workgroup
// memory WebGPU requires, a barrier): with a workgroup per row and thread 0 adding the
// workgroup's terms, SwiftShader took 23 s for a token of SmolLM2.
//
// The weights are the file's bytes, as they are, in an array of u32 words (a block's bytes do
// not start on a word boundary in most formats, so they are read a byte at a time). The format
// file prepended to this one defines, for its block:
//   const BLOCK_BYTES: u32      its size in bytes
//   const BLOCK_LEN: u32        its values (32 or 256)
//   fn block_term(block: u32, a: u32) -> f32
//                               the block at byte `block` times activation block `a`

struct Params {
    // Rows of this part of the matrix (a matrix larger than a storage buffer is in parts).
    rows: u32,
    cols: u32,
    row_bytes: u32,
    // Workgroups along x: a row index is (x + y · groups_x) · WG + the thread's index (a
    // dimension holds at most 65535 workgroups).
    groups_x: u32,
    // The part's first row in the whole matrix, and the whole matrix's rows: y's row width.
    first_row: u32,
    all_rows: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
// The activations' 8-bit values (as f32, exactly), and each block's (d, s): its scale and, for
// Q8_1, its f16-rounded d·Σq.
@group(0) @binding(1) var<storage, read> xq: array<f32>;
@group(0) @binding(2) var<storage, read> xs: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 64u;

fn byte_at(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

fn i8_at(o: u32) -> i32 {
    return (i32(byte_at(o)) << 24u) >> 24u;
}

fn u16_at(o: u32) -> u32 {
    return byte_at(o) | (byte_at(o + 1u) << 8u);
}

fn f16_at(o: u32) -> f32 {
    return unpack2x16float(u16_at(o)).x;
}

fn u32_at(o: u32) -> u32 {
    return u16_at(o) | (u16_at(o + 2u) << 16u);
}

// Activation value i (its 8-bit integer).
fn qa(i: u32) -> i32 {
    return i32(xq[i]);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let row = (group.x + group.y * p.groups_x) * WG + t;
    set_opaque_zero(p.groups_x, 0u);
    // The activation row (a prompt's position).
    let b = group.z;
    if (row >= p.rows) {
        return;
    }
    let blocks = p.cols / BLOCK_LEN;
    let row_at = row * p.row_bytes;
    let a_at = b * blocks;
    var sum = 0.0;
    for (var i = 0u; i < blocks; i++) {
        sum += opaque(block_term(row_at + i * BLOCK_BYTES, a_at + i));
    }
    y[b * p.all_rows + p.first_row + row] = sum;
}
