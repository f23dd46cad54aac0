//! Attention, computed the way llama.cpp's CPU code computes it, over an f16 KV cache: with its
//! flash attention, or without it (see [`AttentionKernel`]).
//!
//! Quantized models amplify tiny numeric differences: a last-bit change in one layer can flip
//! how an activation rounds to 8 bits in the next, and after thirty layers two engines pick
//! different tokens where the top two are close. So the pieces that set numerics follow
//! llama.cpp's order of operations: RMS norm summed in f64 and scaled then weighted; RoPE angles
//! stepped in f32 and the rotation fused as its compiled code fuses it; keys and values stored
//! as f16; queries rounded to f16 for the key dot product; then either an online softmax whose
//! value accumulator is kept in f16 (flash attention) or a softmax whose probabilities are
//! rounded to f16 before they weight the values (unfused).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{math, AttentionKernel, RopeStyle};
use crate::backend::CacheSpec;
use crate::error::{Error, Result};

/// RMS norm of each `width`-long row of `x`, times `weight`, in place.
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for row in x.chunks_exact_mut(width) {
        let sum: f64 = row.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / width as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = (*v * scale) * w;
        }
    }
}

/// Soft-caps every value of `x` to `±cap` as llama.cpp's graph does (Gemma 2's final logits):
/// times `1/cap`, then tanh, then times `cap`, each step rounded to f32.
pub fn soft_cap(x: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    x.iter_mut().for_each(|v| *v = math::tanh(*v * inv) * cap);
}

/// How positions turn into rotation angles.
#[derive(Debug, Clone, Copy)]
pub struct Rope<'a> {
    /// Dimensions rotated at the start of each head.
    pub dims: usize,
    /// Base frequency.
    pub base: f32,
    /// Which dimensions are paired.
    pub style: RopeStyle,
    /// YaRN: (frequency scale, the low and high correction dimensions).
    pub yarn: Option<(f32, [f32; 2])>,
    /// Per-pair divisors of the angles, `[dims / 2]` (LongRoPE's factors, Llama 3.1's
    /// `rope_freqs`).
    pub factors: Option<&'a [f32]>,
    /// Factor the cosines and sines are multiplied by (LongRoPE's attention factor; 1 else).
    pub mscale: f32,
}

impl Rope<'_> {
    /// YaRN's correction dimensions for `dims` rotated dimensions, `base`, and the original
    /// context length (with the usual β_fast = 32, β_slow = 1).
    pub fn yarn_correction(dims: usize, base: f32, original_context: usize) -> [f32; 2] {
        let dim = |beta: f32| dims as f32 * math::ln(original_context as f32 / (beta * 2.0 * std::f32::consts::PI)) / (2.0 * math::ln(base));
        [dim(32.0).floor().max(0.0), dim(1.0).ceil().min(dims as f32 - 1.0)]
    }
}

/// Rotates the first `rope.dims` values of each `head_dim`-long head of `x` (rows of `heads`
/// heads, one row per position from `pos`).
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, pos: usize, rope: &Rope) {
    let (dims, style) = (rope.dims, rope.style);
    let half = dims / 2;
    let mut cos = vec![0f32; half];
    let mut sin = vec![0f32; half];
    for (p, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        rope_angles(pos + p, rope, &mut cos, &mut sin);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = match style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + half),
                };
                // llama.cpp's compiled rotation fuses the first product of each line into
                // its subtraction or addition.
                let (x0, x1) = (head[a], head[b]);
                head[a] = math::fma(x0, cos[i], -(x1 * sin[i]));
                head[b] = math::fma(x0, sin[i], x1 * cos[i]);
            }
        }
    }
}

/// The cosines and sines of the `rope.dims / 2` rotation angles at `position` (the lengths of
/// `cos` and `sin`), each times the rotation scale `rope.mscale`.
pub(crate) fn rope_angles(position: usize, rope: &Rope, cos: &mut [f32], sin: &mut [f32]) {
    let theta_scale = math::powf(rope.base, -2.0 / rope.dims as f32);
    // The angle of pair i is position · theta_scale^i, stepped in f32.
    let mut theta_base = position as f32;
    for (i, (cos, sin)) in cos.iter_mut().zip(sin.iter_mut()).enumerate() {
        let theta = rope.factors.map_or(theta_base, |f| theta_base / f[i]);
        let angle = match rope.yarn {
            None => theta,
            Some((freq_scale, [low, high])) => {
                // Blend interpolated and extrapolated angles across the correction band.
                let ramp = 1.0 - (((i as f32) - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                freq_scale * theta * (1.0 - ramp) + theta * ramp
            }
        };
        *cos = math::cos(angle) * rope.mscale;
        *sin = math::sin(angle) * rope.mscale;
        theta_base *= theta_scale;
    }
}

/// Positions a sliding-window layer's ring holds beyond its window: the most one part of a
/// batch adds before its queries attend (llama.cpp's window cache likewise holds the window
/// and a batch).
pub const RING_PART: usize = 64;

/// Keys and values of one layer as f16, `[kv_heads][rows][dim]`, allocated once. With
/// `values_in_keys`, a value is the start of its key (latent attention) and is not stored twice.
///
/// A global layer has a row for each of its `capacity` positions. A sliding-window layer's
/// queries see only the last `window` positions, so it keeps a ring of `window - 1 +
/// RING_PART` rows (fewer when the capacity is smaller) and position `p` lives in row
/// `p % rows`: its memory is bounded by the window, not the context.
#[derive(Clone)]
pub struct KvCache {
    keys: Vec<f16>,
    values: Vec<f16>,
    values_in_keys: bool,
    kv_heads: usize,
    /// Positions it can be filled to.
    capacity: usize,
    /// Rows of memory per head: `capacity`, or a sliding-window layer's ring.
    rows: usize,
    /// Positions its queries attend to, when it is a sliding-window layer's.
    window: Option<usize>,
    head_dim: usize,
    value_dim: usize,
    /// Positions filled.
    len: usize,
    /// The first position whose keys and values it still holds (a ring overwrites the oldest).
    oldest: usize,
}

/// `kv_heads × rows × width` zeros, or [`Error::KvCacheTooLarge`] when that overflows a
/// `usize` or the memory cannot be had (WebAssembly's 4 GiB).
fn zeroed(kv_heads: usize, rows: usize, width: usize) -> Result<Vec<f16>> {
    let too_large = || Error::KvCacheTooLarge { positions: rows, bytes: u64::MAX };
    let len = kv_heads.checked_mul(rows).and_then(|n| n.checked_mul(width)).ok_or_else(too_large)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| too_large())?;
    v.resize(len, f16::ZERO);
    Ok(v)
}

/// The row of `rows` position `at` lives in (its own until a ring wraps).
fn row_of(at: usize, rows: usize) -> usize {
    if at < rows {
        at
    } else {
        at % rows
    }
}

impl KvCache {
    /// An empty cache of `spec`'s shape.
    ///
    /// # Errors
    /// [`Error::KvCacheTooLarge`] when its size overflows a `usize` or the memory cannot be had
    /// (WebAssembly's 4 GiB).
    pub fn new(spec: &CacheSpec) -> Result<KvCache> {
        let rows = spec.rows();
        Ok(KvCache {
            keys: zeroed(spec.kv_heads, rows, spec.head_dim)?,
            values: if spec.values_in_keys { Vec::new() } else { zeroed(spec.kv_heads, rows, spec.value_dim)? },
            values_in_keys: spec.values_in_keys,
            kv_heads: spec.kv_heads,
            capacity: spec.capacity,
            rows,
            window: spec.window,
            head_dim: spec.head_dim,
            value_dim: spec.value_dim,
            len: 0,
            oldest: 0,
        })
    }

    /// The row position `at` lives in.
    fn row(&self, at: usize) -> usize {
        row_of(at, self.rows)
    }

    /// Positions one [`KvCache::append`] may add: all that fit, or for a ring that wraps,
    /// [`RING_PART`], so that no position a query of the same part still sees is overwritten.
    pub fn part(&self) -> usize {
        match self.window {
            Some(w) if self.rows < self.capacity => self.rows + 1 - w.min(self.rows),
            _ => usize::MAX,
        }
    }

    /// Appends `n` positions: `k` is `[n][kv_heads][head_dim]`, `v` `[n][kv_heads][value_dim]`
    /// (ignored when values live in the keys).
    ///
    /// # Errors
    /// [`Error::PromptTooLong`] beyond the capacity; [`Error::Compute`] when `n` is more than
    /// [`KvCache::part`] allows.
    pub fn append(&mut self, k: &[f32], v: &[f32], n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(Error::PromptTooLong { tokens: self.len + n, context: self.capacity });
        }
        if n > self.part() {
            return Err(Error::Compute(format!("{n} positions at once in a ring of {} rows", self.rows)));
        }
        for p in 0..n {
            let row = self.row(self.len + p);
            for h in 0..self.kv_heads {
                let src = &k[(p * self.kv_heads + h) * self.head_dim..][..self.head_dim];
                let dst = &mut self.keys[(h * self.rows + row) * self.head_dim..][..self.head_dim];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f16::from_f32(*s);
                }
                if self.values_in_keys {
                    continue;
                }
                let src = &v[(p * self.kv_heads + h) * self.value_dim..][..self.value_dim];
                let dst = &mut self.values[(h * self.rows + row) * self.value_dim..][..self.value_dim];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f16::from_f32(*s);
                }
            }
        }
        self.len += n;
        self.oldest = self.oldest.max(self.len.saturating_sub(self.rows));
        Ok(())
    }

    /// The first of `len` positions a query after them sees: all of them, or a window's.
    fn first_seen(&self, len: usize) -> usize {
        self.window.map_or(0, |w| len.saturating_sub(w.saturating_sub(1)))
    }

    /// Forgets every position from `len` on. A ring that has overwritten positions the next
    /// query would see cannot go back that far: it then changes nothing and says `false`.
    pub fn truncate(&mut self, len: usize) -> bool {
        let len = self.len.min(len);
        if self.first_seen(len) < self.oldest {
            return false;
        }
        self.len = len;
        true
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.len = 0;
        self.oldest = 0;
    }

    /// Makes room for `capacity` positions (never fewer than it has), keeping those filled.
    /// The layout is per head, so each head's filled rows move to their new place. A ring
    /// grows to at most its window and [`RING_PART`]; one that has not yet wrapped holds each
    /// position in its own row, so its rows move as a global layer's do.
    ///
    /// # Errors
    /// [`Error::KvCacheTooLarge`] as [`KvCache::new`]; the cache is then as it was.
    pub fn grow(&mut self, capacity: usize) -> Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let spec = CacheSpec { kv_heads: self.kv_heads, capacity, head_dim: self.head_dim, value_dim: self.value_dim, values_in_keys: self.values_in_keys, window: self.window };
        let rows = spec.rows();
        if rows > self.rows {
            let regrow = |old: &[f16], dim: usize| -> Result<Vec<f16>> {
                let mut new = zeroed(self.kv_heads, rows, dim)?;
                for h in 0..self.kv_heads {
                    let filled = self.len * dim;
                    new[h * rows * dim..][..filled].copy_from_slice(&old[h * self.rows * dim..][..filled]);
                }
                Ok(new)
            };
            let keys = regrow(&self.keys, self.head_dim)?;
            if !self.values_in_keys {
                self.values = regrow(&self.values, self.value_dim)?;
            }
            self.keys = keys;
            self.rows = rows;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Positions of `len` that a save keeps: all, or the last `window - 1` of a sliding-window
    /// layer (what the next query sees).
    pub fn saved_positions(&self, len: usize) -> usize {
        len - self.first_seen(len)
    }

    /// The filled positions' keys and values (those [`KvCache::saved_positions`] keeps) as
    /// little-endian f16 bytes, head by head (keys, then values).
    pub fn filled_bytes(&self, out: &mut Vec<u8>) {
        let first = self.first_seen(self.len);
        let mut put = |data: &[f16], dim: usize| {
            for h in 0..self.kv_heads {
                for at in first..self.len {
                    for v in &data[(h * self.rows + self.row(at)) * dim..][..dim] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        };
        put(&self.keys, self.head_dim);
        if !self.values_in_keys {
            put(&self.values, self.value_dim);
        }
    }

    /// Fills the cache to `len` positions from what [`KvCache::filled_bytes`] wrote; returns
    /// the bytes it read, or `None` when `bytes` is too short or `len` beyond the capacity.
    pub fn fill_from_bytes(&mut self, len: usize, bytes: &[u8]) -> Option<usize> {
        if len > self.capacity {
            return None;
        }
        let first = self.first_seen(len);
        let mut read = 0;
        let (heads, rows) = (self.kv_heads, self.rows);
        let mut take = |data: &mut [f16], dim: usize| -> Option<()> {
            for h in 0..heads {
                for at in first..len {
                    for v in &mut data[(h * rows + row_of(at, rows)) * dim..][..dim] {
                        let pair = bytes.get(read..read + 2)?;
                        *v = f16::from_le_bytes([pair[0], pair[1]]);
                        read += 2;
                    }
                }
            }
            Some(())
        };
        take(&mut self.keys, self.head_dim)?;
        if !self.values_in_keys {
            take(&mut self.values, self.value_dim)?;
        }
        self.len = len;
        self.oldest = first;
        Some(read)
    }

    fn key(&self, head: usize, at: usize) -> &[f16] {
        &self.keys[(head * self.rows + self.row(at)) * self.head_dim..][..self.head_dim]
    }

    fn value(&self, head: usize, at: usize) -> &[f16] {
        if self.values_in_keys {
            return &self.key(head, at)[..self.value_dim];
        }
        &self.values[(head * self.rows + self.row(at)) * self.value_dim..][..self.value_dim]
    }

    /// Bytes the cache holds per position.
    pub fn bytes_per_position(&self) -> usize {
        2 * self.kv_heads * (self.head_dim + if self.values_in_keys { 0 } else { self.value_dim })
    }

    /// Positions it has memory for: its capacity, or a sliding-window layer's ring.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// The shape of one attention computation.
pub struct Spec<'a> {
    /// Query heads.
    pub heads: usize,
    /// Factor applied to each query·key product.
    pub scale: f32,
    /// Scores are soft-capped to `±cap` (Gemma 2): `cap · tanh(score / cap)`. llama.cpp's flash
    /// attention scales the products before capping them, its unfused attention after; the two
    /// agree where the scale is 1, as for Gemma 2, whose queries carry the scale.
    pub softcap: Option<f32>,
    /// Keys further back than this are not attended to (sliding-window layers).
    pub window: Option<usize>,
    /// Queries attend only within their chunk of this many positions, from the largest
    /// multiple of it not after them (Llama 4's chunked layers).
    pub chunk: Option<usize>,
    /// A logit per query head that joins the softmax without a value (gpt-oss's attention
    /// sinks): it takes part of the weight and gives nothing back.
    pub sinks: Option<&'a [f32]>,
    /// Whose rounding to follow.
    pub kernel: AttentionKernel,
}

impl Spec<'_> {
    /// The first position a query at `at` sees.
    fn first_seen(&self, at: usize) -> usize {
        let windowed = self.window.map_or(0, |w| (at + 1).saturating_sub(w));
        windowed.max(self.chunk.map_or(0, |c| at / c.max(1) * c))
    }

    /// A query·key product as llama.cpp's flash attention scores it: the soft-cap divides the
    /// scale before the product is scaled.
    fn flash_score(&self, dot: f32) -> f32 {
        match self.softcap {
            None => dot * self.scale,
            Some(cap) => cap * math::tanh(dot * (self.scale / cap)),
        }
    }

    /// A query·key product as llama.cpp's unfused attention scores it: soft-capped by its own
    /// graph operations (see [`soft_cap`]), then scaled by its softmax.
    fn unfused_score(&self, dot: f32) -> f32 {
        match self.softcap {
            None => dot * self.scale,
            Some(cap) => math::tanh(dot * (1.0 / cap)) * cap * self.scale,
        }
    }
}

/// Attends queries `q` (`[seq][heads][head_dim]`, at positions `pos..pos+seq`, whose keys and
/// values are already in `cache`) over the cache; returns `[seq][heads][value_dim]`.
pub fn attend(q: &[f32], seq: usize, pos: usize, cache: &KvCache, spec: &Spec) -> Vec<f32> {
    attend_part(q, seq, pos, cache, spec, seq > 1)
}

/// [`attend`] for `seq` queries of a batch (of more than one query when `batch`).
fn attend_part(q: &[f32], seq: usize, pos: usize, cache: &KvCache, spec: &Spec, batch: bool) -> Vec<f32> {
    match spec.kernel {
        AttentionKernel::Flash => attend_flash(q, seq, pos, cache, spec),
        AttentionKernel::Unfused => attend_unfused(q, seq, pos, cache, spec, if batch { SumOrder::Tiled } else { SumOrder::Lanes }),
    }
}

/// Appends a batch's keys and values (`k` `[seq][kv_heads][head_dim]`, `v`
/// `[seq][kv_heads][value_dim]`, empty when values live in the keys) to `cache` at positions
/// `pos..pos+seq` and attends its queries `q` over it, as [`attend`]. A ring (a sliding-window
/// layer's cache) takes the batch a part ([`KvCache::part`]) at a time, each part's queries
/// attending before the next part overwrites the oldest rows. Each query's result is the one
/// a single pass gives: a query's sums run over the positions it sees whatever the part, and
/// the unfused kernel keeps the whole batch's summation order.
///
/// # Errors
/// [`Error::PromptTooLong`] beyond the cache's capacity; [`Error::Compute`] when the keys or
/// values are not `seq` rows.
pub fn append_and_attend(cache: &mut KvCache, q: &[f32], k: &[f32], v: &[f32], seq: usize, pos: usize, spec: &Spec) -> Result<Vec<f32>> {
    let (key_row, value_row) = (cache.kv_heads * cache.head_dim, if cache.values_in_keys { 0 } else { cache.kv_heads * cache.value_dim });
    if k.len() != seq * key_row || v.len() < seq * value_row {
        return Err(Error::Compute(format!("{} keys and {} values for {seq} positions", k.len(), v.len())));
    }
    let query_row = q.len() / seq.max(1);
    let part = cache.part().max(1);
    let mut out = Vec::with_capacity(seq * spec.heads * cache.value_dim);
    for first in (0..seq).step_by(part) {
        let n = part.min(seq - first);
        cache.append(&k[first * key_row..][..n * key_row], &v[first * value_row..][..n * value_row], n)?;
        out.extend(attend_part(&q[first * query_row..][..n * query_row], n, pos + first, cache, spec, seq > 1));
    }
    Ok(out)
}

/// Keys a task of [`attend_flash`] scores before it weighs their values: its scores and
/// weights stay in the L1 cache while each key and value row is converted once for all of the
/// task's heads.
const FLASH_TILE: usize = 128;

/// Tasks [`attend_flash`] splits a decoding step into at least, where the heads allow: a
/// token's few key/value heads (Qwen3-Coder: 4) would otherwise leave threads idle.
const FLASH_MIN_TASKS: usize = 8;

/// [`attend`] as llama.cpp's flash attention computes it: an online softmax (rescaling what was
/// accumulated whenever the maximum grows) whose value accumulator is rounded to f16 after
/// every update.
///
/// Each task takes query heads that share a key/value head (all of them, or an equal part
/// where that leaves fewer than [`FLASH_MIN_TASKS`] tasks), so that each key and value row is
/// converted from f16 once for them all, and goes through the keys a tile of [`FLASH_TILE`] at
/// a time in three passes: every head's scores; every head's softmax steps (the running
/// maximum decides which exponential each key needs; they are then taken together); the value
/// rows, each weighed into every head's accumulator. Each head's arithmetic is the
/// one-key-at-a-time recurrence's, in its order, to the bit (see the tests).
fn attend_flash(q: &[f32], seq: usize, pos: usize, cache: &KvCache, spec: &Spec) -> Vec<f32> {
    let (hd, vd) = (cache.head_dim, cache.value_dim);
    let group = spec.heads / cache.kv_heads;
    // Heads per task: a divisor of the group.
    let rows = seq * spec.heads;
    let per_task = (1..=group).rev().find(|&g| group.is_multiple_of(g) && rows / g >= FLASH_MIN_TASKS).unwrap_or(1);
    let mut out = vec![0f32; rows * vd];
    crate::platform::parallel_chunks(&mut out, per_task * vd, |task, out| {
        let heads = out.len() / vd.max(1);
        let first_row = task * per_task;
        let (s, first_head) = (first_row / spec.heads, first_row % spec.heads);
        let kv = first_head / group;
        let at = pos + s;
        // `[heads][hd]`: the queries, rounded to f16 (held as f32, exactly).
        let queries: Vec<f32> = q[first_row * hd..(first_row + heads) * hd].iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        // Per head: the running maximum and sum, and the value accumulator (f16, as llama.cpp
        // keeps it: rounding after each update is storing it).
        let (mut max, mut sum) = (vec![f32::NEG_INFINITY; heads], vec![0f32; heads]);
        let mut acc = vec![f16::ZERO; heads * vd];
        // `[heads][FLASH_TILE]`: scores, then the exponentials the softmax steps need; whether
        // a key raised its head's maximum (its exponential then rescales the accumulator).
        let mut exps = vec![0f32; heads * FLASH_TILE];
        let mut raised = vec![false; heads * FLASH_TILE];
        let (mut key, mut value, mut sums) = (vec![0f32; hd], vec![0f32; vd], vec![0f32; vd]);
        let keys = spec.first_seen(at)..at.min(cache.len.saturating_sub(1)) + 1;
        for tile_start in keys.clone().step_by(FLASH_TILE) {
            let tile = tile_start..(tile_start + FLASH_TILE).min(keys.end);
            let n = tile.len();
            for (i, key_at) in tile.clone().enumerate() {
                cache.key(kv, key_at).convert_to_f32_slice(&mut key);
                for (h, query) in queries.chunks_exact(hd).enumerate() {
                    exps[h * FLASH_TILE + i] = spec.flash_score(dot_lanes(&key, query));
                }
            }
            // The softmax steps: a key above the maximum rescales what came before by
            // e^(max − score) and weighs 1; any other weighs e^(score − max).
            for h in 0..heads {
                let (exps, raised) = (&mut exps[h * FLASH_TILE..][..n], &mut raised[h * FLASH_TILE..][..n]);
                for (e, r) in exps.iter_mut().zip(raised.iter_mut()) {
                    let score = *e;
                    *r = score > max[h];
                    if *r {
                        *e = max[h] - score;
                        max[h] = score;
                    } else {
                        *e = score - max[h];
                    }
                }
                math::exp_in_place(exps);
                for (&e, &r) in exps.iter().zip(raised.iter()) {
                    let (old_scale, weight) = if r { (e, 1.0) } else { (1.0, e) };
                    sum[h] = sum[h] * old_scale + weight;
                }
            }
            for (i, key_at) in tile.enumerate() {
                cache.value(kv, key_at).convert_to_f32_slice(&mut value);
                for (h, acc) in acc.chunks_exact_mut(vd).enumerate() {
                    let (e, r) = (exps[h * FLASH_TILE + i], raised[h * FLASH_TILE + i]);
                    let weight = if r {
                        update_f16(acc, |a, _| a * e, &value);
                        1.0
                    } else {
                        e
                    };
                    update_f16(acc, |a, v| math::fma(v, weight, a), &value);
                }
            }
        }
        for (h, out) in out.chunks_exact_mut(vd).enumerate() {
            acc[h * vd..][..vd].convert_to_f32_slice(&mut sums);
            let mut sum = sum[h];
            // The head's sink joins the softmax last, the accumulator now in f32.
            if let Some(&sink) = spec.sinks.and_then(|sinks| sinks.get(first_head + h)) {
                if sink > max[h] {
                    let old_scale = math::exp(max[h] - sink);
                    sums.iter_mut().for_each(|a| *a *= old_scale);
                    sum = sum * old_scale + 1.0;
                } else {
                    sum += math::exp(sink - max[h]);
                }
            }
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            for (o, a) in out.iter_mut().zip(&sums) {
                *o = a * inv;
            }
        }
    });
    out
}

/// `acc[i] ← f(acc[i], values[i])` rounded to f16, sixteen values at a time (converted to f32
/// and back together, which keeps the loop in vector registers).
#[inline(always)]
fn update_f16(acc: &mut [f16], f: impl Fn(f32, f32) -> f32, values: &[f32]) {
    let (chunks, rest) = acc.as_chunks_mut::<16>();
    let (value_chunks, value_rest) = values.as_chunks::<16>();
    let mut sums = [0f32; 16];
    for (acc, values) in chunks.iter_mut().zip(value_chunks) {
        acc.convert_to_f32_slice(&mut sums);
        for (a, &v) in sums.iter_mut().zip(values) {
            *a = f(*a, v);
        }
        acc.convert_from_f32_slice(&sums);
    }
    for (a, &v) in rest.iter_mut().zip(value_rest) {
        *a = f16::from_f32(f(a.to_f32(), v));
    }
}

/// [`attend`] as llama.cpp computes it without flash attention: the f16 queries times the f16
/// keys; ggml's softmax of the scaled scores (its vectorised exponential, [`math::exp_ggml`],
/// sums of 16 folded in f32 and added in f64, one f32 reciprocal); the probabilities rounded to
/// f16; their products with the f16 values summed in f32.
///
/// llama.cpp views the cache padded to a multiple of 256 positions, with zero probability for
/// all it does not attend to, and multiplies a batch of queries with its tiled matrix product
/// but a single query with its dot product; the two group their sums differently
/// ([`SumOrder`]). Zero terms do not change a sum, so the padding is left out here beyond what
/// keeps the grouping.
///
/// A sliding window's masked positions before it are left out too: in whole 64-wide steps
/// they add exact zeros to every sum, wherever they fall.
fn attend_unfused(q: &[f32], seq: usize, pos: usize, cache: &KvCache, spec: &Spec, order: SumOrder) -> Vec<f32> {
    let (hd, vd) = (cache.head_dim, cache.value_dim);
    let group = spec.heads / cache.kv_heads;
    let mut out = vec![0f32; seq * spec.heads * vd];
    crate::platform::parallel_chunks(&mut out, vd, |row, out| {
        let (s, h) = (row / spec.heads, row % spec.heads);
        let kv = h / group;
        let query: Vec<f32> = q[row * hd..(row + 1) * hd].iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        let at = pos + s;
        // Positions first..visible can be attended to; the scores start at the 64-wide step
        // the first one falls in.
        let (first, visible) = (spec.first_seen(at), at.min(cache.len.saturating_sub(1)) + 1);
        let base = first / 64 * 64;
        let (mut key, mut value) = (vec![0f32; hd], vec![0f32; vd]);
        // Scaled scores from position `base`, -inf where masked; a whole number of 64-wide steps.
        let mut probs = vec![f32::NEG_INFINITY; visible.next_multiple_of(64) - base];
        for (key_at, score) in (base..visible).zip(&mut probs).skip(first - base) {
            cache.key(kv, key_at).convert_to_f32_slice(&mut key);
            *score = spec.unfused_score(order.dot(&key, &query));
        }
        // The head's sink joins the softmax: in its maximum and its sum.
        let sink = spec.sinks.and_then(|sinks| sinks.get(h)).copied();
        let max = probs.iter().fold(sink.unwrap_or(f32::NEG_INFINITY), |m, &v| m.max(v));
        let mut sum = 0f64;
        for block in probs.chunks_exact_mut(16) {
            block.iter_mut().for_each(|v| *v = math::exp_ggml(*v - max));
            sum += f64::from(fold_halves(block));
        }
        if let Some(sink) = sink {
            sum += f64::from(math::exp(sink - max));
        }
        let inv = (1.0 / sum) as f32;
        probs.iter_mut().for_each(|p| *p = f16::from_f32(*p * inv).to_f32());
        // out[d] = Σ p·v[d] over the positions, each term fused into its slot's partial sum in
        // position order (masked and padded positions add nothing, and those before the
        // window may no longer be in a ring). The partial sums lie slot by slot, `vd` of them
        // each, so that a position's terms go to consecutive sums.
        let slots = order.slots();
        let mut partial = vec![0f32; slots * vd];
        for (key_at, &p) in (base..visible).zip(&probs).skip(first - base) {
            cache.value(kv, key_at).convert_to_f32_slice(&mut value);
            let slot = key_at % slots;
            for (sum, v) in partial[slot * vd..(slot + 1) * vd].iter_mut().zip(&value) {
                *sum = math::fma(*v, p, *sum);
            }
        }
        order.fold_columns(&mut partial, out);
    });
    out
}

/// How llama.cpp's f16 kernels group the terms of a dot product.
#[derive(Debug, Clone, Copy)]
enum SumOrder {
    /// Its dot product, for a single row: see [`dot_lanes`].
    Lanes,
    /// Its tiled matrix product (tinyBLAS), for two rows or more: term i fused into lane
    /// i mod 16, the lanes folded in halves. It takes lengths that are a multiple of 16 and
    /// leaves the others to the dot product.
    Tiled,
}

impl SumOrder {
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        if matches!(self, SumOrder::Lanes) || !a.len().is_multiple_of(16) {
            return dot_lanes(a, b);
        }
        fold_halves(&fused_lanes(a, b))
    }

    /// The partial sums a term goes to by its index modulo this.
    fn slots(self) -> usize {
        match self {
            SumOrder::Lanes => 64,
            SumOrder::Tiled => 16,
        }
    }

    /// The sum of the partial sums (`slots()` of them), [`fold_steps`] or [`fold_halves`], of
    /// each column of `partial` (`slots()` rows as wide as `out`) into `out`: for each column
    /// the same additions in the same order, done a row at a time over contiguous memory.
    /// `partial` is left as scratch.
    fn fold_columns(self, partial: &mut [f32], out: &mut [f32]) {
        let width = out.len();
        let (low, high) = partial.split_at_mut(16 * width);
        if let SumOrder::Lanes = self {
            // fold_steps' first step: row l becomes (l + (32 + l)) + ((16 + l) + (48 + l)).
            let row = |r: usize| &high[(r - 16) * width..(r - 15) * width];
            for (l, a) in low.chunks_exact_mut(width).enumerate() {
                for (((a, &p32), &p16), &p48) in a.iter_mut().zip(row(32 + l)).zip(row(16 + l)).zip(row(48 + l)) {
                    *a = (*a + p32) + (p16 + p48);
                }
            }
        }
        // fold_halves: rows 0..half += rows half..2·half, down to one row.
        let mut half = 16;
        while half > 1 {
            half /= 2;
            let (front, back) = low.split_at_mut(half * width);
            for (a, b) in front.iter_mut().zip(&back[..half * width]) {
                *a += *b;
            }
        }
        out.copy_from_slice(&low[..width]);
    }
}

/// Term i of Σ a·b fused into lane i mod 16 (the lengths a multiple of 16), in one 512-bit
/// vector where the compiler targets AVX-512 (it does not find that form by itself).
fn fused_lanes(a: &[f32], b: &[f32]) -> [f32; 16] {
    let (a, b) = (a.as_chunks::<16>().0, b.as_chunks::<16>().0);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_loadu_ps, _mm512_setzero_ps};
        // SAFETY: the build targets AVX-512 F (the cfg above); 16 f32s are loaded from each
        // 16-element array; sixteen f32 lanes are sixteen f32s.
        unsafe {
            let mut acc = _mm512_setzero_ps();
            for (ca, cb) in a.iter().zip(b) {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(ca.as_ptr()), _mm512_loadu_ps(cb.as_ptr()), acc);
            }
            std::mem::transmute::<std::arch::x86_64::__m512, [f32; 16]>(acc)
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        let mut lanes = [0f32; 16];
        for (ca, cb) in a.iter().zip(b) {
            for ((lane, &x), &y) in lanes.iter_mut().zip(ca).zip(cb) {
                *lane = math::fma(x, y, *lane);
            }
        }
        lanes
    }
}

/// The sum of 16 lanes as a 512-bit horizontal add computes it: halves added pairwise down to
/// one lane.
fn fold_halves(lanes: &[f32]) -> f32 {
    let mut v = [0f32; 16];
    v.copy_from_slice(lanes);
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            v[l] += v[l + width];
        }
    }
    v[0]
}

/// The sum of four 16-lane accumulators (64 partial sums, accumulator j holding terms 16j..16j+15
/// of each 64-wide step) as llama.cpp's f16 dot product folds them: (0 + 2) + (1 + 3), then the
/// lanes in halves.
fn fold_steps(partial: &[f32]) -> f32 {
    let mut a0 = [0f32; 16];
    for l in 0..16 {
        a0[l] = partial[l] + partial[32 + l];
        a0[l] += partial[16 + l] + partial[48 + l];
    }
    fold_halves(&a0)
}

/// Σ a·b summed as llama.cpp's 512-bit f16 kernel sums it: 64-wide steps into four 16-lane
/// accumulators, folded pairwise, then lanes folded in halves; a tail beyond the last full step
/// is added in f64. (The inputs are f16 values, so each product is exact in f32.)
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const STEP: usize = 64;
    let full = a.len() / STEP * STEP;
    // Accumulator j, lane l at [16j + l]: term i of each step goes to [i].
    let mut acc = [0f32; STEP];
    for (ca, cb) in a[..full].as_chunks::<STEP>().0.iter().zip(b[..full].as_chunks::<STEP>().0) {
        for ((lane, x), y) in acc.iter_mut().zip(ca).zip(cb) {
            *lane = math::fma(*x, *y, *lane);
        }
    }
    let mut sum = f64::from(fold_steps(&acc));
    for i in full..a.len() {
        sum += (a[i] * b[i]) as f64;
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty cache of this shape.
    fn empty_cache(kv_heads: usize, capacity: usize, head_dim: usize, value_dim: usize, values_in_keys: bool, window: Option<usize>) -> KvCache {
        KvCache::new(&CacheSpec { kv_heads, capacity, head_dim, value_dim, values_in_keys, window }).unwrap()
    }

    /// Growing a cache keeps every filled position of every head, and its bytes restore into
    /// another cache exactly.
    #[test]
    fn caches_grow_and_restore_without_changing_a_position() {
        for values_in_keys in [false, true] {
            let (kv_heads, hd, vd, n) = (3, 8, 4, 5);
            let mut cache = empty_cache(kv_heads, 6, hd, vd, values_in_keys, None);
            let k: Vec<f32> = (0..n * kv_heads * hd).map(|i| i as f32 * 0.25).collect();
            let v: Vec<f32> = (0..n * kv_heads * vd).map(|i| -(i as f32)).collect();
            cache.append(&k, &v, n).unwrap();
            let rows = |c: &KvCache| -> Vec<Vec<f16>> { (0..kv_heads).flat_map(|h| (0..n).flat_map(move |t| [c.key(h, t).to_vec(), c.value(h, t).to_vec()])).collect() };
            let before = rows(&cache);
            cache.grow(64).unwrap();
            assert_eq!(cache.capacity, 64);
            assert_eq!(rows(&cache), before);
            cache.append(&k[..kv_heads * hd], &v[..kv_heads * vd], 1).unwrap();
            cache.truncate(n);
            let mut bytes = Vec::new();
            cache.filled_bytes(&mut bytes);
            assert_eq!(bytes.len(), n * cache.bytes_per_position());
            let mut other = empty_cache(kv_heads, 8, hd, vd, values_in_keys, None);
            assert_eq!(other.fill_from_bytes(n, &bytes), Some(bytes.len()));
            assert_eq!(rows(&other), before);
            assert_eq!(other.fill_from_bytes(n, &bytes[..bytes.len() - 1]), None);
            assert_eq!(other.fill_from_bytes(9, &bytes), None);
        }
    }

    /// A sliding-window layer's ring gives every query the bits a full cache gives, a prompt
    /// in one batch and then a token at a time, with its memory at the window and one part;
    /// it cannot go back past what it has overwritten, and its saved window restores exactly.
    #[test]
    fn a_ring_attends_as_a_full_cache_does() {
        let (heads, kv_heads, hd, window, n, prompt) = (4, 2, 64, 5, 150, 140);
        let value = |i: usize| ((i * 7919 % 997) as f32 / 997.0 - 0.5) * 6.0;
        let k: Vec<f32> = (0..n * kv_heads * hd).map(value).collect();
        let v: Vec<f32> = (0..n * kv_heads * hd).map(|i| value(i + 17)).collect();
        let q: Vec<f32> = (0..n * heads * hd).map(|i| value(i + 3)).collect();
        let rows = |first: usize, seq: usize, width: usize, x: &[f32]| x[first * width..(first + seq) * width].to_vec();
        for kernel in [AttentionKernel::Flash, AttentionKernel::Unfused] {
            let spec = Spec { heads, scale: 0.11, softcap: None, window: Some(window), chunk: None, sinks: None, kernel };
            let mut full = empty_cache(kv_heads, 200, hd, hd, false, None);
            let mut ring = empty_cache(kv_heads, 200, hd, hd, false, Some(window));
            assert_eq!(ring.rows(), window - 1 + RING_PART);
            let step = |cache: &mut KvCache, first: usize, seq: usize| {
                let (kk, vv, qq) = (rows(first, seq, kv_heads * hd, &k), rows(first, seq, kv_heads * hd, &v), rows(first, seq, heads * hd, &q));
                append_and_attend(cache, &qq, &kk, &vv, seq, first, &spec).unwrap()
            };
            for (first, seq) in std::iter::once((0, prompt)).chain((prompt..n).map(|p| (p, 1))) {
                let (a, b) = (step(&mut full, first, seq), step(&mut ring, first, seq));
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{kernel:?} at {first}");
            }
            assert!(!ring.truncate(50) && ring.len == n);
            assert!(ring.truncate(n - 2));
            let mut bytes = Vec::new();
            ring.filled_bytes(&mut bytes);
            assert_eq!(bytes.len(), (window - 1) * ring.bytes_per_position());
            let mut restored = empty_cache(kv_heads, 200, hd, hd, false, Some(window));
            assert_eq!(restored.fill_from_bytes(n - 2, &bytes), Some(bytes.len()));
            assert!(full.truncate(n - 2));
            let (a, b) = (step(&mut full, n - 2, 2), step(&mut restored, n - 2, 2));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{kernel:?} restored");
        }
    }

    /// Both computations equal a plain softmax-weighted sum (to f16 precision).
    #[test]
    fn attention_matches_plain_softmax() {
        let (heads, kv_heads, hd, n) = (4, 2, 64, 9);
        let mut cache = empty_cache(kv_heads, 16, hd, hd, false, None);
        let value = |i: usize| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * 2.0;
        let k: Vec<f32> = (0..n * kv_heads * hd).map(value).collect();
        let v: Vec<f32> = (0..n * kv_heads * hd).map(|i| value(i + 13)).collect();
        cache.append(&k, &v, n).unwrap();
        let q: Vec<f32> = (0..heads * hd).map(|i| value(i + 5)).collect();
        // Without a soft-cap, and with one small enough to bite, at the scale 1 of the only
        // model that caps (Gemma 2 scales its queries instead): llama.cpp's flash attention
        // scales before capping, its unfused attention after.
        for (kernel, softcap) in [(AttentionKernel::Flash, None), (AttentionKernel::Unfused, None), (AttentionKernel::Flash, Some(0.5)), (AttentionKernel::Unfused, Some(0.5))] {
            let scale = if softcap.is_some() { 1.0 } else { 0.125 };
            let spec = Spec { heads, scale, softcap, window: None, chunk: None, sinks: None, kernel };
            let out = attend(&q, 1, n - 1, &cache, &spec);
            for h in 0..heads {
                let kv = h / 2;
                let capped = |s: f32| softcap.map_or(s, |cap| cap * (s / cap).tanh());
                let scores: Vec<f32> = (0..n).map(|t| capped((0..hd).map(|d| cache.key(kv, t)[d].to_f32() * f16::from_f32(q[h * hd + d]).to_f32()).sum::<f32>() * scale)).collect();
                assert!(softcap.is_none_or(|cap| scores.iter().all(|s| s.abs() <= cap)));
                let max = scores.iter().cloned().fold(f32::MIN, f32::max);
                let weights: Vec<f32> = scores.iter().map(|s| math::exp(s - max)).collect();
                let total: f32 = weights.iter().sum();
                for d in 0..hd {
                    let want: f32 = (0..n).map(|t| weights[t] * cache.value(kv, t)[d].to_f32()).sum::<f32>() / total;
                    assert!((out[h * hd + d] - want).abs() < 5e-3, "{kernel:?}: head {h} dim {d}: {} vs {want}", out[h * hd + d]);
                }
            }
            // A window of 1 attends to the newest position only.
            let spec = Spec { heads, scale: 0.125, softcap: None, window: Some(1), chunk: None, sinks: None, kernel };
            let out = attend(&q, 1, n - 1, &cache, &spec);
            assert!((out[0] - cache.value(0, n - 1)[0].to_f32()).abs() < 1e-3, "{kernel:?}");
        }
    }

    #[test]
    fn soft_cap_bounds_and_keeps_order() {
        let mut x = vec![-1000.0, -30.0, -0.01, 0.0, 0.01, 29.0, 30.0, 1000.0];
        soft_cap(&mut x, 30.0);
        assert!(x.windows(2).all(|w| w[0] <= w[1]), "{x:?}");
        assert!(x.iter().all(|v| v.abs() <= 30.0), "{x:?}");
        // Near zero it is the identity; at the cap it is 30·tanh(1).
        assert!((x[4] - 0.01).abs() < 1e-7 && x[3] == 0.0 && (x[2] + x[4]).abs() == 0.0);
        assert!((x[6] - 30.0 * 1f32.tanh()).abs() < 1e-5, "{}", x[6]);
    }

    /// The previous, element-at-a-time form of `attend`: the fast form must equal it bit for bit.
    fn attend_reference(q: &[f32], seq: usize, pos: usize, cache: &KvCache, spec: &Spec) -> Vec<f32> {
        let (hd, vd) = (cache.head_dim, cache.value_dim);
        let group = spec.heads / cache.kv_heads;
        let mut out = vec![0f32; seq * spec.heads * vd];
        for (row, out) in out.chunks_exact_mut(vd).enumerate() {
            let (s, h) = (row / spec.heads, row % spec.heads);
            let query: Vec<f32> = q[row * hd..(row + 1) * hd].iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            let mut acc = vec![f16::ZERO; vd];
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
            let at = pos + s;
            for key_at in 0..=at {
                if spec.window.is_some_and(|w| at - key_at >= w) {
                    continue;
                }
                let key: Vec<f32> = cache.key(h / group, key_at).iter().map(|k| k.to_f32()).collect();
                let score = dot_lanes(&key, &query) * spec.scale;
                let (mut old_scale, mut weight) = (1f32, 1f32);
                if score > max {
                    old_scale = math::exp(max - score);
                    max = score;
                    acc.iter_mut().for_each(|a| *a = f16::from_f32(a.to_f32() * old_scale));
                } else {
                    weight = math::exp(score - max);
                }
                for (a, v) in acc.iter_mut().zip(cache.value(h / group, key_at)) {
                    *a = f16::from_f32(v.to_f32().mul_add(weight, a.to_f32()));
                }
                sum = sum * old_scale + weight;
            }
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = a.to_f32() * inv;
            }
        }
        out
    }

    #[test]
    fn fast_attention_equals_the_element_form_bit_for_bit() {
        let (heads, kv_heads, hd, n) = (6, 2, 80, 23);
        let value = |i: usize| ((i * 7919 % 997) as f32 / 997.0 - 0.5) * 6.0;
        for values_in_keys in [false, true] {
            let vd = if values_in_keys { 64 } else { hd };
            let mut cache = empty_cache(kv_heads, 32, hd, vd, values_in_keys, None);
            let k: Vec<f32> = (0..n * kv_heads * hd).map(value).collect();
            let v: Vec<f32> = (0..n * kv_heads * vd).map(|i| value(i + 17)).collect();
            cache.append(&k, &v, n).unwrap();
            let seq = 3;
            let q: Vec<f32> = (0..seq * heads * hd).map(|i| value(i + 3)).collect();
            for window in [None, Some(5)] {
                let spec = Spec { heads, scale: 0.11, softcap: None, window, chunk: None, sinks: None, kernel: AttentionKernel::Flash };
                let fast = attend_flash(&q, seq, n - seq, &cache, &spec);
                let slow = attend_reference(&q, seq, n - seq, &cache, &spec);
                assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "window {window:?}, shared values {values_in_keys}");
            }
        }
    }

    /// The flash attention a head at a time and a key at a time, as it was computed before
    /// [`attend_flash`] took a key/value head's queries together and its keys a tile at a time:
    /// the two must agree to the bit.
    fn attend_flash_by_head(q: &[f32], seq: usize, pos: usize, cache: &KvCache, spec: &Spec) -> Vec<f32> {
        let (hd, vd) = (cache.head_dim, cache.value_dim);
        let group = spec.heads / cache.kv_heads;
        let mut out = vec![0f32; seq * spec.heads * vd];
        crate::platform::parallel_chunks(&mut out, vd, |row, out| {
            let (s, h) = (row / spec.heads, row % spec.heads);
            let kv = h / group;
            // f16 values are held as f32 (exactly) and converted a row at a time.
            let query: Vec<f32> = q[row * hd..(row + 1) * hd].iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            let (mut key, mut value) = (vec![0f32; hd], vec![0f32; vd]);
            // The value accumulator: f32 values rounded to f16 after every update.
            let (mut acc, mut acc16) = (vec![0f32; vd], vec![f16::ZERO; vd]);
            let mut round = |acc: &mut [f32]| {
                acc16.convert_from_f32_slice(acc);
                acc16.convert_to_f32_slice(acc);
            };
            let at = pos + s;
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
            for key_at in spec.first_seen(at)..=at.min(cache.len.saturating_sub(1)) {
                cache.key(kv, key_at).convert_to_f32_slice(&mut key);
                let score = spec.flash_score(dot_lanes(&key, &query));
                // Online softmax: rescale what was accumulated when the maximum grows.
                let (mut old_scale, mut weight) = (1f32, 1f32);
                if score > max {
                    old_scale = math::exp(max - score);
                    max = score;
                    acc.iter_mut().for_each(|a| *a *= old_scale);
                    round(&mut acc);
                } else {
                    weight = math::exp(score - max);
                }
                cache.value(kv, key_at).convert_to_f32_slice(&mut value);
                for (a, v) in acc.iter_mut().zip(&value) {
                    *a = math::fma(*v, weight, *a);
                }
                round(&mut acc);
                sum = sum * old_scale + weight;
            }
            // The head's sink joins the softmax last, the accumulator now in f32.
            if let Some(&sink) = spec.sinks.and_then(|sinks| sinks.get(h)) {
                if sink > max {
                    let old_scale = math::exp(max - sink);
                    acc.iter_mut().for_each(|a| *a *= old_scale);
                    sum = sum * old_scale + 1.0;
                } else {
                    sum += math::exp(sink - max);
                }
            }
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = a * inv;
            }
        });
        out
    }

    /// [`attend_flash`] equals the head-at-a-time form to the bit: groups of 1, 3 and 8 query
    /// heads per key/value head (whole and split tasks), one query and a batch, more keys than a
    /// tile, windows, chunks, sinks, a soft cap and values kept in the keys.
    #[test]
    fn flash_attention_by_groups_and_tiles_equals_head_by_head() {
        let value = |i: usize| ((i * 7919 % 997) as f32 / 997.0 - 0.5) * 6.0;
        let sinks = [0.5f32, -1.0, 3.0, 0.0, 2.5, -0.25, 1.0, 4.0, -3.0, 0.75, 0.1, 9.0, -2.0, 1.5, 0.2, 0.3];
        for (heads, kv_heads, hd, vd, values_in_keys) in [(8, 8, 64, 64, false), (6, 2, 80, 64, true), (16, 2, 128, 128, false), (32, 4, 128, 128, false)] {
            let n = 300;
            for (seq, window, chunk, sink, softcap) in [(1, None, None, false, None), (3, None, None, true, None), (1, Some(100), None, false, Some(30.0)), (5, None, Some(128), true, None), (20, Some(7), None, false, None)] {
                let mut cache = empty_cache(kv_heads, 512, hd, vd, values_in_keys, None);
                let k: Vec<f32> = (0..n * kv_heads * hd).map(value).collect();
                let v: Vec<f32> = (0..n * kv_heads * vd).map(|i| value(i + 17)).collect();
                cache.append(&k, &v, n).unwrap();
                let q: Vec<f32> = (0..seq * heads * hd).map(|i| value(i + 3) * 0.4).collect();
                let spec = Spec { heads, scale: 0.09, softcap, window, chunk, sinks: sink.then_some(&sinks[..heads.min(16)]), kernel: AttentionKernel::Flash };
                let fast = attend_flash(&q, seq, n - seq, &cache, &spec);
                let slow = attend_flash_by_head(&q, seq, n - seq, &cache, &spec);
                let same = fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same && fast.len() == slow.len(), "{heads} heads over {kv_heads}, {seq} queries, window {window:?}, chunk {chunk:?}, sinks {sink}, cap {softcap:?}");
            }
        }
    }


    /// Times [`attend_flash`] against the head-at-a-time form on Qwen3-Coder-30B-A3B's
    /// attention (32 query heads over 4 key/value heads of 128): one query over 150 and 1000
    /// positions (decoding), and a 128-query prompt. `cargo test --release --lib
    /// flash_attention_speed -- --ignored --nocapture` (`RAYON_NUM_THREADS=1` for one thread).
    #[test]
    #[ignore = "a benchmark"]
    fn flash_attention_speed() {
        use std::time::Instant;
        let value = |i: usize| ((i * 7919 % 997) as f32 / 997.0 - 0.5) * 2.0;
        let (heads, kv_heads, hd) = (32, 4, 128);
        for (n, seq) in [(150, 1), (1000, 1), (128, 128)] {
            let mut cache = empty_cache(kv_heads, 1024, hd, hd, false, None);
            let k: Vec<f32> = (0..n * kv_heads * hd).map(value).collect();
            let v: Vec<f32> = (0..n * kv_heads * hd).map(|i| value(i + 17)).collect();
            cache.append(&k, &v, n).unwrap();
            let q: Vec<f32> = (0..seq * heads * hd).map(|i| value(i + 3) * 0.3).collect();
            let spec = Spec { heads, scale: 0.088, softcap: None, window: None, chunk: None, sinks: None, kernel: AttentionKernel::Flash };
            let time = |f: &dyn Fn() -> Vec<f32>| {
                let mut best = f64::INFINITY;
                for _ in 0..20 {
                    let start = Instant::now();
                    std::hint::black_box(f());
                    best = best.min(start.elapsed().as_secs_f64());
                }
                best
            };
            let fast = time(&|| attend_flash(&q, seq, n - seq, &cache, &spec));
            let slow = time(&|| attend_flash_by_head(&q, seq, n - seq, &cache, &spec));
            println!("{n} positions, {seq} queries: {:.1} µs (head by head {:.1} µs), {:.2}×", fast * 1e6, slow * 1e6, slow / fast);
        }
    }

    /// The unfused computation as llama.cpp lays it out: the cache viewed padded to 256
    /// positions and every sum taken over the whole view in its kernel's order.
    fn attend_unfused_padded(q: &[f32], seq: usize, pos: usize, cache: &KvCache, spec: &Spec) -> Vec<f32> {
        let (hd, vd) = (cache.head_dim, cache.value_dim);
        let group = spec.heads / cache.kv_heads;
        let padded = cache.len.div_ceil(256) * 256;
        let order = if seq > 1 { SumOrder::Tiled } else { SumOrder::Lanes };
        let mut out = vec![0f32; seq * spec.heads * vd];
        for (row, out) in out.chunks_exact_mut(vd).enumerate() {
            let (s, h) = (row / spec.heads, row % spec.heads);
            let query: Vec<f32> = q[row * hd..(row + 1) * hd].iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            let at = pos + s;
            let mut scores = vec![f32::NEG_INFINITY; padded];
            for (key_at, score) in scores.iter_mut().enumerate().take(at + 1) {
                if spec.window.is_none_or(|w| at - key_at < w) {
                    let key: Vec<f32> = cache.key(h / group, key_at).iter().map(|k| k.to_f32()).collect();
                    *score = order.dot(&key, &query) * spec.scale;
                }
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let exps: Vec<f32> = scores.iter().map(|&v| math::exp_ggml(v - max)).collect();
            let sum: f64 = exps.chunks_exact(16).map(|b| f64::from(fold_halves(b))).sum();
            let inv = (1.0 / sum) as f32;
            let probs: Vec<f32> = exps.iter().map(|&e| f16::from_f32(e * inv).to_f32()).collect();
            for (d, o) in out.iter_mut().enumerate() {
                let column: Vec<f32> = (0..padded).map(|j| if j < cache.len { cache.value(h / group, j)[d].to_f32() } else { 0.0 }).collect();
                *o = order.dot(&column, &probs);
            }
        }
        out
    }

    #[test]
    fn unfused_attention_equals_the_padded_form_bit_for_bit() {
        let (heads, kv_heads, hd) = (4, 2, 80);
        let value = |i: usize| ((i * 7919 % 997) as f32 / 997.0 - 0.5) * 6.0;
        for (values_in_keys, n) in [(false, 23), (true, 23), (false, 70), (true, 300)] {
            let vd = if values_in_keys { 64 } else { hd };
            let mut cache = empty_cache(kv_heads, 320, hd, vd, values_in_keys, None);
            let k: Vec<f32> = (0..n * kv_heads * hd).map(value).collect();
            let v: Vec<f32> = (0..n * kv_heads * vd).map(|i| value(i + 17)).collect();
            cache.append(&k, &v, n).unwrap();
            for seq in [1, 3] {
                let q: Vec<f32> = (0..seq * heads * hd).map(|i| value(i + 3)).collect();
                for window in [None, Some(5)] {
                    let spec = Spec { heads, scale: 0.11, softcap: None, window, chunk: None, sinks: None, kernel: AttentionKernel::Unfused };
                    let fast = attend(&q, seq, n - seq, &cache, &spec);
                    let padded = attend_unfused_padded(&q, seq, n - seq, &cache, &spec);
                    assert!(fast.iter().zip(&padded).all(|(a, b)| a.to_bits() == b.to_bits()), "n {n}, seq {seq}, window {window:?}, shared values {values_in_keys}");
                }
            }
        }
    }

    #[test]
    fn rope_rotates_pairs() {
        // At position 0 nothing turns; at position 1 the first pair turns by one radian.
        let plain = |style| Rope { dims: 4, base: 10_000.0, style, yarn: None, factors: None, mscale: 1.0 };
        let mut x = vec![1.0, 0.0, 1.0, 0.0];
        rope(&mut x, 1, 4, 0, &plain(RopeStyle::Interleaved));
        assert_eq!(x, [1.0, 0.0, 1.0, 0.0]);
        let mut x = vec![1.0, 0.0, 1.0, 0.0];
        rope(&mut x, 1, 4, 1, &plain(RopeStyle::Interleaved));
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        let mut x = vec![1.0, 1.0, 0.0, 0.0];
        rope(&mut x, 1, 4, 1, &plain(RopeStyle::Halves));
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
        // YaRN: the fastest pair keeps its angle (extrapolated), the slowest is interpolated.
        let yarn = Rope { dims: 64, base: 10_000.0, style: RopeStyle::Interleaved, yarn: Some((0.25, Rope::yarn_correction(64, 10_000.0, 4096))), factors: None, mscale: 1.0 };
        let mut x = vec![0f32; 64];
        x[0] = 1.0;
        x[62] = 1.0;
        rope(&mut x, 1, 64, 100, &yarn);
        assert!((x[1] - 100f32.sin()).abs() < 1e-4);
        let slow = 100.0 * 10_000f32.powf(-62.0 / 64.0) * 0.25;
        assert!((x[63] - slow.sin()).abs() < 1e-4, "{} vs {}", x[63], slow.sin());
        // Factors divide each pair's angle; the attention factor scales the rotation.
        let factors = [2.0, 4.0];
        let long = Rope { factors: Some(&factors), mscale: 1.5, ..plain(RopeStyle::Halves) };
        let mut x = vec![1.0, 1.0, 0.0, 0.0];
        rope(&mut x, 1, 4, 1, &long);
        assert!((x[0] - 1.5 * 0.5f32.cos()).abs() < 1e-6 && (x[2] - 1.5 * 0.5f32.sin()).abs() < 1e-6, "{x:?}");
        let second = 0.01f32 / 4.0;
        assert!((x[1] - 1.5 * second.cos()).abs() < 1e-6 && (x[3] - 1.5 * second.sin()).abs() < 1e-6, "{x:?}");
    }

    #[test]
    fn rms_norm_normalises_rows() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0];
        rms_norm(&mut x, &[1.0, 2.0], 1e-6);
        let r = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / r).abs() < 1e-5 && (x[1] - 8.0 / r).abs() < 1e-5);
        assert_eq!(&x[2..], [0.0, 0.0]);
    }
}
