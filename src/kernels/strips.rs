//! Weights repacked at load time into strips of [`ROWS`] rows, for the AVX-512 VNNI kernels
//! ([`super::avx512`]).
//!
//! A strip holds, for each block position of its rows in turn, one *tile*: the [`ROWS`] rows'
//! blocks at that position, rearranged so that one 64-byte vector holds four consecutive values
//! of each of the sixteen rows (bytes `4r..4r + 4` belong to row `r`). Against four activation
//! bytes broadcast to every 32-bit lane, one `vpdpbusd` then adds four products to each row's
//! own lane: the rows' sums come out side by side, and no horizontal sum is ever needed. The
//! values stay packed as in the file (nibbles stay nibbles), so a strip is as large as the rows
//! it holds, except Q4_K and Q5_K, whose 6-bit scales are stored one per byte (64 more bytes per
//! 2304 or 2816). The last strip of a matrix whose rows are not a multiple of [`ROWS`] is
//! padded with zero rows, whose results are dropped.
//!
//! Each tile is laid out in the order the kernels read it, so that decoding, which streams the
//! weights from memory once, reads each tile from start to end rather than from two regions
//! of it side by side (which made Q6_K's decoding kernel 1.6 to 2 times slower on matrices
//! too large for the cache).
//!
//! The layouts, per tile (`r`: row in the strip, `j`: byte in a 4-byte group; f16 scales as in
//! the file, little-endian; "vector" means 64 bytes):
//!
//! - Q4_0, Q4_1, Q5_0, Q5_1: the 16 scales `d`; Q4_1/Q5_1 then the 16 minimums; Q5_0/Q5_1 then
//!   eight 64-bit masks, bit `4r + j` of mask `g` being the fifth bit of value `4g + j` of row
//!   `r`; then 4 vectors of nibbles, byte `4r + j` of vector `h` being byte `4h + j` of row `r`'s
//!   nibbles (so its low nibble is value `4h + j`, its high nibble value `16 + 4h + j`).
//! - Q8_0: the 16 scales, then 8 vectors, byte `4r + j` of vector `g` being value `4g + j` of
//!   row `r` plus 128 (stored as `q ^ 0x80`, an unsigned byte for `vpdpbusd`).
//! - Q4_K, Q5_K: the 16 scales `d`, the 16 `dmin`; the eight 6-bit sub-block scales, one byte
//!   each, 16 bytes per sub-block (byte `16s + r`); the eight minimums in pairs (byte
//!   `32k + 2r + t` is minimum `2k + t` of row `r`), ready to widen to 16-bit pairs; then 32
//!   vectors of nibbles, byte `4r + j` of vector `8c + g` being byte `32c + 4g + j` of row `r`'s
//!   nibbles (low nibble: value `64c + 4g + j`, sub-block `2c`; high nibble: value
//!   `64c + 32 + 4g + j`, sub-block `2c + 1`); Q5_K adds 64 masks, bit `4r + j` of mask
//!   `8s + g` being the fifth bit of value `32s + 4g + j`, those of sub-blocks `2c` and
//!   `2c + 1` after vectors `8c..8c + 8` ([`q45k_nibbles_at`]).
//! - Q6_K: the 16 scales `d`; the sixteen i8 sub-block scales in pairs (byte `32k + 2r + t` is
//!   scale `2k + t` of row `r`); 32 vectors of low nibbles, where vector `2s + e` holds, in byte
//!   `4r + j`, value `16s + 4e + j` (low nibble) and value `16s + 8 + 4e + j` (high nibble);
//!   16 vectors of top bits, bits `2i..2i + 2` of byte `4r + j` of vector `s` being the top two
//!   bits of value `16s + 4i + j`. (Values are the unsigned 6-bit ones, 0..63.) The vectors of
//!   sub-blocks `2k` and `2k + 1` lie together, nibbles then top bits ([`q6k_low_at`]).

use super::blocks::Format;

/// Rows per strip: one per 32-bit lane of a 512-bit vector.
pub const ROWS: usize = 16;

/// Whether rows of `format` can be repacked into strips.
pub fn supported(format: Format) -> bool {
    matches!(format, Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 | Format::Q8_0 | Format::Q4K | Format::Q5K | Format::Q6K)
}

/// Bytes of one tile (`ROWS` rows' blocks at one position).
pub fn tile_bytes(format: Format) -> usize {
    let (_, block) = format.block();
    match format {
        Format::Q4K | Format::Q5K => ROWS * block + 64,
        _ => ROWS * block,
    }
}

/// The `rows` rows of `data` (`cols` values each, in `format`'s blocks) as strips, the last one
/// padded with zero rows. `data` must hold exactly `rows` rows.
pub fn repack(format: Format, data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let (per_block, _) = format.block();
    let blocks = cols / per_block;
    let tile = tile_bytes(format);
    let mut out = vec![0u8; rows.div_ceil(ROWS) * blocks * tile];
    if blocks == 0 {
        return out;
    }
    // Strips in parallel, a few at a time: loading a model waits on this.
    const STRIPS_PER_TASK: usize = 8;
    crate::platform::parallel_chunks(&mut out, STRIPS_PER_TASK * blocks * tile, |task, strips| pack_strips(format, data, cols, task * STRIPS_PER_TASK, strips));
    out
}

/// Strips number `first` on of the rows of `data` (`cols` values each) into `strips`, whose
/// length is a whole number of strips: for a matrix repacked for one product, a task's strips at
/// a time, into a buffer of its thread's that stays in the cache while they are multiplied.
pub fn repack_part(format: Format, data: &[u8], cols: usize, first: usize, strips: &mut [u8]) {
    strips.fill(0);
    if cols >= format.block().0 {
        pack_strips(format, data, cols, first, strips);
    }
}

/// Fills `strips` (zeroed, whole strips) with the strips from number `first` on of the rows of
/// `data`. Each row is read in order and scattered over its strip's tiles, which stay in the
/// cache.
fn pack_strips(format: Format, data: &[u8], cols: usize, first: usize, strips: &mut [u8]) {
    let (per_block, block) = format.block();
    let blocks = cols / per_block;
    let (row_bytes, tile) = (blocks * block, tile_bytes(format));
    let zero = vec![0u8; row_bytes];
    for (s, strip) in strips.chunks_exact_mut(blocks * tile).enumerate() {
        let first_row = (first + s) * ROWS;
        for r in 0..ROWS {
            // Padding rows are zero blocks (whose scales are zero).
            let row = data.get((first_row + r) * row_bytes..(first_row + r + 1) * row_bytes).unwrap_or(&zero);
            for (b, t) in row.chunks_exact(block).zip(strip.chunks_exact_mut(tile)) {
                pack(format, b, r, t);
            }
        }
    }
}

/// Whether repacking a matrix of `format` for one product of `m` activation rows costs less
/// than it saves. The strips kernels run four to five times faster than the row kernels from a
/// few rows on; repacking costs about one pass of the row kernels for the formats whose tiles
/// are mostly copied words (Q4_K 768×2048 on one thread: 0.10 ms to repack; 8 rows: 0.45 ms
/// in rows, 0.09 ms in strips), two to four for the others (Q6_K 2048×768: 0.37 ms; Q5_K and
/// Q8_0: 0.7-0.9 ms, whose blocks are small or carry bit masks).
pub fn pays_for_one_product(format: Format, m: usize) -> bool {
    match format {
        Format::Q4_0 | Format::Q4_1 | Format::Q4K => m >= 3,
        Format::Q6K => m >= 12,
        Format::Q5_0 | Format::Q5_1 | Format::Q5K | Format::Q8_0 => m >= 16,
        _ => false,
    }
}

/// Whether the strips of `format` multiply one activation row faster than its rows do, from
/// memory (see [`super::QMatrix::repacking_pays_for_one_row`]): every format with strips but
/// Q5_K, since the strips prefetch across pages.
pub fn pays_for_one_row(format: Format) -> bool {
    matches!(format, Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 | Format::Q8_0 | Format::Q4K | Format::Q6K)
}

/// The bytes row `row` had in the file, rebuilt from the strips of a matrix of `cols` columns.
pub fn row(format: Format, strips: &[u8], cols: usize, row: usize) -> Vec<u8> {
    let (per_block, block) = format.block();
    let blocks = cols / per_block;
    let tile = tile_bytes(format);
    let strip = strips.get(row / ROWS * blocks * tile..(row / ROWS + 1) * blocks * tile).unwrap_or(&[]);
    let mut out = vec![0u8; blocks * block];
    for (t, o) in strip.chunks_exact(tile).zip(out.chunks_exact_mut(block)) {
        unpack(format, t, row % ROWS, o);
    }
    out
}

/// Where each part of a 32-value format's block and tile is: (minimum, fifth bits, nibbles or
/// bytes) in the block; the tile stores them in that order after the scales.
fn parts_32(format: Format) -> (bool, Option<usize>, usize) {
    match format {
        Format::Q4_0 => (false, None, 2),
        Format::Q4_1 => (true, None, 4),
        Format::Q5_0 => (false, Some(2), 6),
        Format::Q5_1 => (true, Some(4), 8),
        _ => (false, None, 2), // Q8_0
    }
}

/// Where Q4_K/Q5_K (`five`) tile vector `8c + g` of nibbles starts: after the scales, the 8
/// vectors of each pair of sub-blocks (`2c`, `2c + 1`), each pair followed by its Q5_K masks,
/// in the order the kernels read them.
pub const fn q45k_nibbles_at(five: bool, c: usize, g: usize) -> usize {
    320 + (512 + 128 * five as usize) * c + 64 * g
}

/// Where Q5_K tile mask `8s + g` starts (see [`q45k_nibbles_at`]).
pub const fn q5k_mask_at(s: usize, g: usize) -> usize {
    320 + 640 * (s / 2) + 512 + 64 * (s % 2) + 8 * g
}

/// Where Q6_K tile vector `v` of low nibbles starts. The vectors of each pair of sub-blocks
/// (`2k`, `2k + 1`) lie together, nibbles then top bits, in the order the kernels read them:
/// a tile is read from start to end.
pub const fn q6k_low_at(v: usize) -> usize {
    let s = v / 2;
    288 + 384 * (s / 2) + 128 * (s % 2) + 64 * (v % 2)
}

/// Where Q6_K tile vector `s` of top bits starts (see [`q6k_low_at`]).
pub const fn q6k_high_at(s: usize) -> usize {
    288 + 384 * (s / 2) + 256 + 64 * (s % 2)
}

/// The value index of nibble `nibble` (0 low, 1 high) of byte `4r + j` of Q6_K tile vector `v`.
fn q6k_nibble_value(v: usize, nibble: usize, j: usize) -> usize {
    16 * (v / 2) + 8 * nibble + 4 * (v % 2) + j
}

/// Writes row `r`'s block `b` into its place in tile `t`.
fn pack(format: Format, b: &[u8], r: usize, t: &mut [u8]) {
    match format {
        Format::Q4K | Format::Q5K => {
            let five = format == Format::Q5K;
            t[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
            t[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&b[2..4]);
            let (scales, mins) = scales_mins_k4(&b[4..16]);
            for s in 0..8 {
                t[64 + 16 * s + r] = scales[s];
                t[192 + 32 * (s / 2) + 2 * r + s % 2] = mins[s];
            }
            let qs = if five { &b[48..176] } else { &b[16..144] };
            for c in 0..4 {
                for g in 0..8 {
                    let at = q45k_nibbles_at(five, c, g) + 4 * r;
                    t[at..at + 4].copy_from_slice(&qs[32 * c + 4 * g..32 * c + 4 * g + 4]);
                }
            }
            if five {
                let qh = &b[16..48];
                for s in 0..8 {
                    for g in 0..8 {
                        let at = q5k_mask_at(s, g);
                        let mut bits = 0u64;
                        for j in 0..4 {
                            bits |= u64::from((qh[4 * g + j] >> s) & 1) << (4 * r + j);
                        }
                        let mask = u64::from_le_bytes(t[at..at + 8].try_into().unwrap_or_default()) | bits;
                        t[at..at + 8].copy_from_slice(&mask.to_le_bytes());
                    }
                }
            }
        }
        Format::Q6K => {
            t[2 * r..2 * r + 2].copy_from_slice(&b[208..210]);
            for s in 0..16 {
                t[32 + 32 * (s / 2) + 2 * r + s % 2] = b[192 + s];
            }
            // Four consecutive values at a time (`k` a multiple of 4), as the bytes of a word.
            // Value `128h + 32q + l` has its low four bits in nibble `q / 2` of byte
            // `64h + 32(q % 2) + l` and its top two bits at bit `2q` of byte `128 + 32h + l`.
            let place = |k: usize| (k / 128, k % 128 / 32, k % 32);
            let low = |k: usize| {
                let (h, q, l) = place(k);
                let w = word(b, 64 * h + 32 * (q % 2) + l);
                if q < 2 { w & 0x0F0F_0F0F } else { (w >> 4) & 0x0F0F_0F0F }
            };
            let top = |k: usize| {
                let (h, q, l) = place(k);
                (word(b, 128 + 32 * h + l) >> (2 * q)) & 0x0303_0303
            };
            for v in 0..32 {
                let k = 16 * (v / 2) + 4 * (v % 2);
                let at = q6k_low_at(v) + 4 * r;
                t[at..at + 4].copy_from_slice(&(low(k) | (low(k + 8) << 4)).to_le_bytes());
            }
            for s in 0..16 {
                let at = q6k_high_at(s) + 4 * r;
                let w = top(16 * s) | (top(16 * s + 4) << 2) | (top(16 * s + 8) << 4) | (top(16 * s + 12) << 6);
                t[at..at + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
        _ => {
            let (min, qh, qs) = parts_32(format);
            let eight = format == Format::Q8_0;
            t[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
            if min {
                t[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&b[2..4]);
            }
            let mut at = 32 + 32 * min as usize;
            if let Some(h) = qh {
                let fifth = word(b, h);
                for g in 0..8 {
                    let mask = u64::from_le_bytes(t[at + 8 * g..at + 8 * g + 8].try_into().unwrap_or_default()) | u64::from((fifth >> (4 * g)) & 0x0F) << (4 * r);
                    t[at + 8 * g..at + 8 * g + 8].copy_from_slice(&mask.to_le_bytes());
                }
                at += 64;
            }
            // Four values (or pairs of nibbles) at a time; Q8_0's bytes made unsigned.
            for v in 0..if eight { 8 } else { 4 } {
                let w = word(b, qs + 4 * v) ^ if eight { 0x8080_8080 } else { 0 };
                t[at + 64 * v + 4 * r..at + 64 * v + 4 * r + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
    }
}

/// The little-endian u32 at `at`.
fn word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes row `r`'s block of tile `t` into `b`: the inverse of [`pack`].
fn unpack(format: Format, t: &[u8], r: usize, b: &mut [u8]) {
    match format {
        Format::Q4K | Format::Q5K => {
            let five = format == Format::Q5K;
            b[0..2].copy_from_slice(&t[2 * r..2 * r + 2]);
            b[2..4].copy_from_slice(&t[32 + 2 * r..32 + 2 * r + 2]);
            let scales: [u8; 8] = std::array::from_fn(|s| t[64 + 16 * s + r]);
            let mins: [u8; 8] = std::array::from_fn(|s| t[192 + 32 * (s / 2) + 2 * r + s % 2]);
            for j in 0..4 {
                b[4 + j] = scales[j] | ((scales[j + 4] >> 4) << 6);
                b[8 + j] = mins[j] | ((mins[j + 4] >> 4) << 6);
                b[12 + j] = (scales[j + 4] & 0x0F) | ((mins[j + 4] & 0x0F) << 4);
            }
            let qs_block = if five { 48 } else { 16 };
            for c in 0..4 {
                for g in 0..8 {
                    for j in 0..4 {
                        b[qs_block + 32 * c + 4 * g + j] = t[q45k_nibbles_at(five, c, g) + 4 * r + j];
                    }
                }
            }
            if five {
                for g in 0..8 {
                    for j in 0..4 {
                        let mut byte = 0u8;
                        for s in 0..8 {
                            let at = q5k_mask_at(s, g);
                            let mask = u64::from_le_bytes(t[at..at + 8].try_into().unwrap_or_default());
                            byte |= (((mask >> (4 * r + j)) & 1) as u8) << s;
                        }
                        b[16 + 4 * g + j] = byte;
                    }
                }
            }
        }
        Format::Q6K => {
            b[208..210].copy_from_slice(&t[2 * r..2 * r + 2]);
            for s in 0..16 {
                b[192 + s] = t[32 + 32 * (s / 2) + 2 * r + s % 2];
            }
            let mut u = [0u8; 256];
            for v in 0..32 {
                for j in 0..4 {
                    let byte = t[q6k_low_at(v) + 4 * r + j];
                    u[q6k_nibble_value(v, 0, j)] = byte & 0x0F;
                    u[q6k_nibble_value(v, 1, j)] = byte >> 4;
                }
            }
            for s in 0..16 {
                for j in 0..4 {
                    let top = t[q6k_high_at(s) + 4 * r + j];
                    for i in 0..4 {
                        u[16 * s + 4 * i + j] |= ((top >> (2 * i)) & 3) << 4;
                    }
                }
            }
            for h in 0..2 {
                let v = &u[128 * h..128 * h + 128];
                for l in 0..32 {
                    b[64 * h + l] = (v[l] & 0x0F) | ((v[l + 64] & 0x0F) << 4);
                    b[64 * h + l + 32] = (v[l + 32] & 0x0F) | ((v[l + 96] & 0x0F) << 4);
                    b[128 + 32 * h + l] = (v[l] >> 4) | ((v[l + 32] >> 4) << 2) | ((v[l + 64] >> 4) << 4) | ((v[l + 96] >> 4) << 6);
                }
            }
        }
        _ => {
            let (min, qh, qs) = parts_32(format);
            b[0..2].copy_from_slice(&t[2 * r..2 * r + 2]);
            let mut at = 32;
            if min {
                b[2..4].copy_from_slice(&t[32 + 2 * r..32 + 2 * r + 2]);
                at += 32;
            }
            if let Some(h) = qh {
                let mut bits = 0u32;
                for g in 0..8 {
                    let mask = u64::from_le_bytes(t[at + 8 * g..at + 8 * g + 8].try_into().unwrap_or_default());
                    bits |= (((mask >> (4 * r)) & 0x0F) as u32) << (4 * g);
                }
                b[h..h + 4].copy_from_slice(&bits.to_le_bytes());
                at += 64;
            }
            let eight = format == Format::Q8_0;
            for v in 0..if eight { 8 } else { 4 } {
                for j in 0..4 {
                    let q = t[at + 64 * v + 4 * r + j];
                    b[qs + 4 * v + j] = if eight { q ^ 0x80 } else { q };
                }
            }
        }
    }
}

/// The eight 6-bit scales and eight 6-bit minimums packed in a Q4_K/Q5_K block's 12 bytes.
fn scales_mins_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..4 {
        scales[j] = q[j] & 63;
        mins[j] = q[j + 4] & 63;
        scales[j + 4] = (q[j + 8] & 0x0F) | ((q[j] >> 6) << 4);
        mins[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
    (scales, mins)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row comes back byte for byte from its strip, for every format, in a matrix whose
    /// last strip is partial; the padding rows are zero.
    #[test]
    fn rows_come_back_from_their_strips() {
        let mut random = crate::xorshift(0x9E37_79B9_7F4A_7C15);
        let mut next = move || random() as u8;
        for format in [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q5_1, Format::Q8_0, Format::Q4K, Format::Q5K, Format::Q6K] {
            let (per_block, block) = format.block();
            let (rows, cols) = (21, 3 * per_block);
            let data: Vec<u8> = (0..rows * 3 * block).map(|_| next()).collect();
            let strips = repack(format, &data, rows, cols);
            assert_eq!(strips.len(), 2 * 3 * tile_bytes(format), "{format:?}");
            for (r, want) in data.chunks_exact(3 * block).enumerate() {
                assert_eq!(row(format, &strips, cols, r), want, "{format:?} row {r}");
            }
            for r in rows..2 * ROWS {
                assert!(row(format, &strips, cols, r).iter().all(|&b| b == 0), "{format:?} padding row {r}");
            }
        }
    }

    /// Times repacking on one thread into a reused buffer (as a product's task repacks its strips):
    /// `cargo test --release --lib repack_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark"]
    fn repack_speed() {
        let mut next = crate::xorshift(7);
        for (format, rows, cols) in [(Format::Q4K, 768, 2048), (Format::Q6K, 2048, 768), (Format::Q8_0, 768, 2048), (Format::Q5K, 768, 2048)] {
            let (per_block, block) = format.block();
            let data: Vec<u8> = (0..rows * cols / per_block * block).map(|_| next() as u8).collect();
            let mut out = vec![0u8; rows.div_ceil(ROWS) * cols / per_block * tile_bytes(format)];
            let mut best = f64::INFINITY;
            for _ in 0..20 {
                let start = std::time::Instant::now();
                repack_part(format, &data, cols, 0, &mut out);
                best = best.min(start.elapsed().as_secs_f64());
                std::hint::black_box(&out);
            }
            println!("{format:?} {rows}×{cols}: repacked in {:.3} ms, {:.2} GB/s", best * 1e3, data.len() as f64 / best / 1e9);
        }
    }
}
