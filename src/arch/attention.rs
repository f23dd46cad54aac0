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

/// How positions turn into rotation angles.
#[derive(Debug, Clone, Copy)]
pub struct Rope {
    /// Dimensions rotated at the start of each head.
    pub dims: usize,
    /// Base frequency.
    pub base: f32,
    /// Which dimensions are paired.
    pub style: RopeStyle,
    /// YaRN: (frequency scale, the low and high correction dimensions).
    pub yarn: Option<(f32, [f32; 2])>,
}

impl Rope {
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
/// `cos` and `sin`).
pub(crate) fn rope_angles(position: usize, rope: &Rope, cos: &mut [f32], sin: &mut [f32]) {
    let theta_scale = math::powf(rope.base, -2.0 / rope.dims as f32);
    // The angle of pair i is position · theta_scale^i, stepped in f32.
    let mut theta = position as f32;
    for (i, (cos, sin)) in cos.iter_mut().zip(sin.iter_mut()).enumerate() {
        let angle = match rope.yarn {
            None => theta,
            Some((freq_scale, [low, high])) => {
                // Blend interpolated and extrapolated angles across the correction band.
                let ramp = 1.0 - (((i as f32) - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                freq_scale * theta * (1.0 - ramp) + theta * ramp
            }
        };
        *cos = math::cos(angle);
        *sin = math::sin(angle);
        theta *= theta_scale;
    }
}

/// Keys and values of one layer as f16, `[kv_heads][capacity][dim]`, allocated once. With
/// `values_in_keys`, a value is the start of its key (latent attention) and is not stored twice.
#[derive(Clone)]
pub struct KvCache {
    keys: Vec<f16>,
    values: Vec<f16>,
    values_in_keys: bool,
    kv_heads: usize,
    capacity: usize,
    head_dim: usize,
    value_dim: usize,
    len: usize,
}

/// `kv_heads × capacity × width` zeros, or [`Error::KvCacheTooLarge`] when that overflows a
/// `usize` or the memory cannot be had (WebAssembly's 4 GiB).
fn zeroed(kv_heads: usize, capacity: usize, width: usize) -> Result<Vec<f16>> {
    let too_large = || Error::KvCacheTooLarge { positions: capacity, bytes: u64::MAX };
    let len = kv_heads.checked_mul(capacity).and_then(|n| n.checked_mul(width)).ok_or_else(too_large)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| too_large())?;
    v.resize(len, f16::ZERO);
    Ok(v)
}

impl KvCache {
    /// An empty cache for `capacity` positions.
    ///
    /// # Errors
    /// [`Error::KvCacheTooLarge`] when its size overflows a `usize` or the memory cannot be had
    /// (WebAssembly's 4 GiB).
    pub fn new(kv_heads: usize, capacity: usize, head_dim: usize, value_dim: usize, values_in_keys: bool) -> Result<KvCache> {
        Ok(KvCache {
            keys: zeroed(kv_heads, capacity, head_dim)?,
            values: if values_in_keys { Vec::new() } else { zeroed(kv_heads, capacity, value_dim)? },
            values_in_keys,
            kv_heads,
            capacity,
            head_dim,
            value_dim,
            len: 0,
        })
    }

    /// Appends `n` positions: `k` is `[n][kv_heads][head_dim]`, `v` `[n][kv_heads][value_dim]`
    /// (ignored when values live in the keys).
    pub fn append(&mut self, k: &[f32], v: &[f32], n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(Error::PromptTooLong { tokens: self.len + n, context: self.capacity });
        }
        for p in 0..n {
            for h in 0..self.kv_heads {
                let src = &k[(p * self.kv_heads + h) * self.head_dim..][..self.head_dim];
                let dst = &mut self.keys[(h * self.capacity + self.len + p) * self.head_dim..][..self.head_dim];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f16::from_f32(*s);
                }
                if self.values_in_keys {
                    continue;
                }
                let src = &v[(p * self.kv_heads + h) * self.value_dim..][..self.value_dim];
                let dst = &mut self.values[(h * self.capacity + self.len + p) * self.value_dim..][..self.value_dim];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f16::from_f32(*s);
                }
            }
        }
        self.len += n;
        Ok(())
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for `capacity` positions (never fewer than it has), keeping those filled.
    /// The layout is per head, so each head's filled rows move to their new place.
    ///
    /// # Errors
    /// [`Error::KvCacheTooLarge`] as [`KvCache::new`]; the cache is then as it was.
    pub fn grow(&mut self, capacity: usize) -> Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let regrow = |old: &[f16], dim: usize| -> Result<Vec<f16>> {
            let mut new = zeroed(self.kv_heads, capacity, dim)?;
            for h in 0..self.kv_heads {
                let rows = self.len * dim;
                new[h * capacity * dim..][..rows].copy_from_slice(&old[h * self.capacity * dim..][..rows]);
            }
            Ok(new)
        };
        let keys = regrow(&self.keys, self.head_dim)?;
        if !self.values_in_keys {
            self.values = regrow(&self.values, self.value_dim)?;
        }
        self.keys = keys;
        self.capacity = capacity;
        Ok(())
    }

    /// The filled positions' keys and values as little-endian f16 bytes, head by head (keys,
    /// then values).
    pub fn filled_bytes(&self, out: &mut Vec<u8>) {
        let mut put = |data: &[f16], dim: usize| {
            for h in 0..self.kv_heads {
                for v in &data[h * self.capacity * dim..][..self.len * dim] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        };
        put(&self.keys, self.head_dim);
        if !self.values_in_keys {
            put(&self.values, self.value_dim);
        }
    }

    /// Fills the first `len` positions from what [`KvCache::filled_bytes`] wrote; returns the
    /// bytes it read, or `None` when `bytes` is too short or `len` beyond the capacity.
    pub fn fill_from_bytes(&mut self, len: usize, bytes: &[u8]) -> Option<usize> {
        if len > self.capacity {
            return None;
        }
        let mut read = 0;
        let (heads, capacity) = (self.kv_heads, self.capacity);
        let mut take = |data: &mut [f16], dim: usize| -> Option<()> {
            for h in 0..heads {
                for v in &mut data[h * capacity * dim..][..len * dim] {
                    let pair = bytes.get(read..read + 2)?;
                    *v = f16::from_le_bytes([pair[0], pair[1]]);
                    read += 2;
                }
            }
            Some(())
        };
        take(&mut self.keys, self.head_dim)?;
        if !self.values_in_keys {
            take(&mut self.values, self.value_dim)?;
        }
        self.len = len;
        Some(read)
    }

    fn key(&self, head: usize, at: usize) -> &[f16] {
        &self.keys[(head * self.capacity + at) * self.head_dim..][..self.head_dim]
    }

    fn value(&self, head: usize, at: usize) -> &[f16] {
        if self.values_in_keys {
            return &self.key(head, at)[..self.value_dim];
        }
        &self.values[(head * self.capacity + at) * self.value_dim..][..self.value_dim]
    }

    /// Bytes the cache holds per position.
    pub fn bytes_per_position(&self) -> usize {
        2 * self.kv_heads * (self.head_dim + if self.values_in_keys { 0 } else { self.value_dim })
    }
}

/// The shape of one attention computation.
pub struct Spec {
    /// Query heads.
    pub heads: usize,
    /// Factor applied to each query·key product.
    pub scale: f32,
    /// Keys further back than this are not attended to (sliding-window layers).
    pub window: Option<usize>,
    /// Whose rounding to follow.
    pub kernel: AttentionKernel,
}

/// Attends queries `q` (`[seq][heads][head_dim]`, at positions `pos..pos+seq`, whose keys and
/// values are already in `cache`) over the cache; returns `[seq][heads][value_dim]`.
pub fn attend(q: &[f32], seq: usize, pos: usize, cache: &KvCache, spec: &Spec) -> Vec<f32> {
    match spec.kernel {
        AttentionKernel::Flash => attend_flash(q, seq, pos, cache, spec),
        AttentionKernel::Unfused => attend_unfused(q, seq, pos, cache, spec),
    }
}

/// [`attend`] as llama.cpp's flash attention computes it: an online softmax (rescaling what was
/// accumulated whenever the maximum grows) whose value accumulator is rounded to f16 after
/// every update.
fn attend_flash(q: &[f32], seq: usize, pos: usize, cache: &KvCache, spec: &Spec) -> Vec<f32> {
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
        for key_at in 0..=at.min(cache.len.saturating_sub(1)) {
            if spec.window.is_some_and(|w| at - key_at >= w) {
                continue;
            }
            cache.key(kv, key_at).convert_to_f32_slice(&mut key);
            let score = dot_lanes(&key, &query) * spec.scale;
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
        let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = a * inv;
        }
    });
    out
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
fn attend_unfused(q: &[f32], seq: usize, pos: usize, cache: &KvCache, spec: &Spec) -> Vec<f32> {
    let (hd, vd) = (cache.head_dim, cache.value_dim);
    let group = spec.heads / cache.kv_heads;
    let order = if seq > 1 { SumOrder::Tiled } else { SumOrder::Lanes };
    let mut out = vec![0f32; seq * spec.heads * vd];
    crate::platform::parallel_chunks(&mut out, vd, |row, out| {
        let (s, h) = (row / spec.heads, row % spec.heads);
        let kv = h / group;
        let query: Vec<f32> = q[row * hd..(row + 1) * hd].iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        let at = pos + s;
        // Positions 0..visible can be attended to, less those outside a sliding window.
        let visible = at.min(cache.len.saturating_sub(1)) + 1;
        let (mut key, mut value) = (vec![0f32; hd], vec![0f32; vd]);
        // Scaled scores, -inf where masked; a whole number of 64-wide steps.
        let mut probs = vec![f32::NEG_INFINITY; visible.next_multiple_of(64)];
        for (key_at, score) in probs[..visible].iter_mut().enumerate() {
            if spec.window.is_some_and(|w| at - key_at >= w) {
                continue;
            }
            cache.key(kv, key_at).convert_to_f32_slice(&mut key);
            *score = order.dot(&key, &query) * spec.scale;
        }
        let max = probs.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0f64;
        for block in probs.chunks_exact_mut(16) {
            block.iter_mut().for_each(|v| *v = math::exp_ggml(*v - max));
            sum += f64::from(fold_halves(block));
        }
        let inv = (1.0 / sum) as f32;
        probs.iter_mut().for_each(|p| *p = f16::from_f32(*p * inv).to_f32());
        // out[d] = Σ p·v[d] over the positions, each term fused into its lane's sum in
        // position order (masked and padded positions add nothing).
        let slots = order.slots();
        let mut lanes = vec![0f32; vd * slots];
        for (key_at, &p) in probs[..visible].iter().enumerate() {
            cache.value(kv, key_at).convert_to_f32_slice(&mut value);
            let slot = key_at % slots;
            for (lane, v) in lanes.chunks_exact_mut(slots).zip(&value) {
                lane[slot] = math::fma(*v, p, lane[slot]);
            }
        }
        for (o, lane) in out.iter_mut().zip(lanes.chunks_exact(slots)) {
            *o = order.fold(lane);
        }
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
        let mut lanes = [0f32; 16];
        for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
            for (l, lane) in lanes.iter_mut().enumerate() {
                *lane = math::fma(ca[l], cb[l], *lane);
            }
        }
        fold_halves(&lanes)
    }

    /// The partial sums a term goes to by its index modulo this.
    fn slots(self) -> usize {
        match self {
            SumOrder::Lanes => 64,
            SumOrder::Tiled => 16,
        }
    }

    /// The sum of the partial sums (`slots()` of them).
    fn fold(self, partial: &[f32]) -> f32 {
        match self {
            SumOrder::Lanes => fold_steps(partial),
            SumOrder::Tiled => fold_halves(partial),
        }
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
    for (ca, cb) in a[..full].chunks_exact(STEP).zip(b[..full].chunks_exact(STEP)) {
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

    /// Growing a cache keeps every filled position of every head, and its bytes restore into
    /// another cache exactly.
    #[test]
    fn caches_grow_and_restore_without_changing_a_position() {
        for values_in_keys in [false, true] {
            let (kv_heads, hd, vd, n) = (3, 8, 4, 5);
            let mut cache = KvCache::new(kv_heads, 6, hd, vd, values_in_keys).unwrap();
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
            let mut other = KvCache::new(kv_heads, 8, hd, vd, values_in_keys).unwrap();
            assert_eq!(other.fill_from_bytes(n, &bytes), Some(bytes.len()));
            assert_eq!(rows(&other), before);
            assert_eq!(other.fill_from_bytes(n, &bytes[..bytes.len() - 1]), None);
            assert_eq!(other.fill_from_bytes(9, &bytes), None);
        }
    }

    /// Both computations equal a plain softmax-weighted sum (to f16 precision).
    #[test]
    fn attention_matches_plain_softmax() {
        let (heads, kv_heads, hd, n) = (4, 2, 64, 9);
        let mut cache = KvCache::new(kv_heads, 16, hd, hd, false).unwrap();
        let value = |i: usize| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * 2.0;
        let k: Vec<f32> = (0..n * kv_heads * hd).map(value).collect();
        let v: Vec<f32> = (0..n * kv_heads * hd).map(|i| value(i + 13)).collect();
        cache.append(&k, &v, n).unwrap();
        let q: Vec<f32> = (0..heads * hd).map(|i| value(i + 5)).collect();
        for kernel in [AttentionKernel::Flash, AttentionKernel::Unfused] {
            let spec = Spec { heads, scale: 0.125, window: None, kernel };
            let out = attend(&q, 1, n - 1, &cache, &spec);
            for h in 0..heads {
                let kv = h / 2;
                let scores: Vec<f32> = (0..n).map(|t| (0..hd).map(|d| cache.key(kv, t)[d].to_f32() * f16::from_f32(q[h * hd + d]).to_f32()).sum::<f32>() * 0.125).collect();
                let max = scores.iter().cloned().fold(f32::MIN, f32::max);
                let weights: Vec<f32> = scores.iter().map(|s| math::exp(s - max)).collect();
                let total: f32 = weights.iter().sum();
                for d in 0..hd {
                    let want: f32 = (0..n).map(|t| weights[t] * cache.value(kv, t)[d].to_f32()).sum::<f32>() / total;
                    assert!((out[h * hd + d] - want).abs() < 5e-3, "{kernel:?}: head {h} dim {d}: {} vs {want}", out[h * hd + d]);
                }
            }
            // A window of 1 attends to the newest position only.
            let spec = Spec { heads, scale: 0.125, window: Some(1), kernel };
            let out = attend(&q, 1, n - 1, &cache, &spec);
            assert!((out[0] - cache.value(0, n - 1)[0].to_f32()).abs() < 1e-3, "{kernel:?}");
        }
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
            let mut cache = KvCache::new(kv_heads, 32, hd, vd, values_in_keys).unwrap();
            let k: Vec<f32> = (0..n * kv_heads * hd).map(value).collect();
            let v: Vec<f32> = (0..n * kv_heads * vd).map(|i| value(i + 17)).collect();
            cache.append(&k, &v, n).unwrap();
            let seq = 3;
            let q: Vec<f32> = (0..seq * heads * hd).map(|i| value(i + 3)).collect();
            for window in [None, Some(5)] {
                let spec = Spec { heads, scale: 0.11, window, kernel: AttentionKernel::Flash };
                let fast = attend_flash(&q, seq, n - seq, &cache, &spec);
                let slow = attend_reference(&q, seq, n - seq, &cache, &spec);
                assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "window {window:?}, shared values {values_in_keys}");
            }
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
            let mut cache = KvCache::new(kv_heads, 320, hd, vd, values_in_keys).unwrap();
            let k: Vec<f32> = (0..n * kv_heads * hd).map(value).collect();
            let v: Vec<f32> = (0..n * kv_heads * vd).map(|i| value(i + 17)).collect();
            cache.append(&k, &v, n).unwrap();
            for seq in [1, 3] {
                let q: Vec<f32> = (0..seq * heads * hd).map(|i| value(i + 3)).collect();
                for window in [None, Some(5)] {
                    let spec = Spec { heads, scale: 0.11, window, kernel: AttentionKernel::Unfused };
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
        let plain = |style| Rope { dims: 4, base: 10_000.0, style, yarn: None };
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
        let yarn = Rope { dims: 64, base: 10_000.0, style: RopeStyle::Interleaved, yarn: Some((0.25, Rope::yarn_correction(64, 10_000.0, 4096))) };
        let mut x = vec![0f32; 64];
        x[0] = 1.0;
        x[62] = 1.0;
        rope(&mut x, 1, 64, 100, &yarn);
        assert!((x[1] - 100f32.sin()).abs() < 1e-4);
        let slow = 100.0 * 10_000f32.powf(-62.0 / 64.0) * 0.25;
        assert!((x[63] - slow.sin()).abs() < 1e-4, "{} vs {}", x[63], slow.sin());
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
