// y = W·x for a matrix of GGUF blocks: one workgroup per weight row and activation row.
//
// The weights are the file's bytes, as they are, in an array of u32 words (a block's bytes do
// not start on a word boundary in most formats, so they are read a byte at a time). The format
// file prepended to this one defines, for its block:
//   const UNITS: u32        how many 32-value units a block has (1, or 8 for the K-quants)
//   const BLOCK_BYTES: u32  its size in bytes
//   fn unit_dot(block: u32, j: u32, xo: u32) -> f32
//                           Σ w·x over unit `j` of the block at byte `block`, with the
//                           activations x[xo .. xo + 32]
// Activations are f32 (not quantized as llama.cpp's CPU code quantizes them): see gpu/mod.rs.

struct Params {
    // Rows of this part of the matrix (a matrix larger than a storage buffer is in parts).
    rows: u32,
    cols: u32,
    row_bytes: u32,
    // Workgroups along x: a row index is x + y · groups_x (a dimension holds at most 65535).
    groups_x: u32,
    // The part's first row in the whole matrix, and the whole matrix's rows: y's row width.
    first_row: u32,
    all_rows: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

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

// Σ x over 32 activations.
fn sum32(xo: u32) -> f32 {
    var s = 0.0;
    for (var l = 0u; l < 32u; l++) {
        s += x[xo + l];
    }
    return s;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let row = group.x + group.y * p.groups_x;
    // The activation row (a prompt's position).
    let b = group.z;
    if (row >= p.rows) {
        return;
    }
    let units = p.cols / 32u;
    let row_at = row * p.row_bytes;
    let x_at = b * p.cols;
    var sum = 0.0;
    for (var u = t; u < units; u += WG) {
        sum += unit_dot(row_at + (u / UNITS) * BLOCK_BYTES, u % UNITS, x_at + u * 32u);
    }
    // Tree reduction of the threads' partial sums.
    partial[t] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            partial[t] += partial[t + s];
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        y[b * p.all_rows + p.first_row + row] = partial[0];
    }
}
