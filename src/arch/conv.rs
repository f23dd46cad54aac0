//! LFM2's gated short convolution and the recurrent state it keeps, computed the way llama.cpp's
//! CPU code computes them.
//!
//! A convolution layer projects each position's row to three parts `b`, `c` and `x` of the
//! hidden width, convolves `b·x` channel by channel over the last `kernel` positions (a causal
//! depthwise convolution), and multiplies the result by `c`. What it must remember of the past
//! is the `kernel - 1` last rows of `b·x`, in f32 as llama.cpp keeps them.

use super::attention::RING_PART;
use super::math;
use crate::backend::KvStore;
use crate::error::{Error, Result};

/// A short-convolution layer's memory: the rows of `b·x` of its last positions, in a ring.
///
/// Position `p` lives in row `p % rows`. The ring holds the `kernel - 1` rows the next position
/// needs and [`RING_PART`] more (fewer when the capacity is smaller), so that a state can be cut
/// back by up to that many positions without running them again, as a sliding-window layer's
/// ring can.
#[derive(Clone, Debug)]
pub struct ConvState {
    /// `[rows][width]`
    data: Vec<f32>,
    width: usize,
    /// Positions the kernel spans, the current one included.
    kernel: usize,
    /// Positions it can be filled to.
    capacity: usize,
    rows: usize,
    /// Positions filled.
    len: usize,
    /// The first position whose row it still holds.
    oldest: usize,
}

/// Rows of memory a state of `kernel` positions and `capacity` needs.
pub(crate) fn ring_rows(kernel: usize, capacity: usize) -> usize {
    capacity.min(kernel.saturating_sub(1) + RING_PART)
}

impl ConvState {
    /// An empty state for rows of `width` channels and a kernel of `kernel` positions.
    ///
    /// # Errors
    /// [`Error::KvCacheTooLarge`] when its size overflows a `usize` or the memory cannot be had.
    pub fn new(width: usize, kernel: usize, capacity: usize) -> Result<ConvState> {
        let rows = ring_rows(kernel, capacity);
        let too_large = || Error::KvCacheTooLarge { positions: capacity, bytes: u64::MAX };
        let len = rows.checked_mul(width).ok_or_else(too_large)?;
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| too_large())?;
        data.resize(len, 0.0);
        Ok(ConvState { data, width, kernel, capacity, rows, len: 0, oldest: 0 })
    }

    /// The first position the next position's convolution reads after `len` positions.
    fn first_needed(&self, len: usize) -> usize {
        len.saturating_sub(self.kernel.saturating_sub(1))
    }

    fn row(&self, at: usize) -> &[f32] {
        &self.data[at % self.rows * self.width..][..self.width]
    }

    /// Runs the gated short convolution of `bcx` (`[seq][3·width]`: `b`, `c`, `x`) at the next
    /// `seq` positions with `weights` (`[width][kernel]`, each channel's taps oldest first),
    /// remembering each position's `b·x`; returns `c` times the convolution, `[seq][width]`.
    /// Each output is summed over the kernel's taps in order, as llama.cpp's compiled loop sums
    /// it: a product added for the taps of its vector part (whole groups of 8), a fused
    /// multiply-add for the rest (all of LFM2's 3).
    ///
    /// # Errors
    /// [`Error::PromptTooLong`] beyond the capacity; [`Error::Compute`] on a shape mismatch.
    pub fn convolve(&mut self, bcx: &[f32], seq: usize, weights: &[f32]) -> Result<Vec<f32>> {
        let (width, kernel) = (self.width, self.kernel);
        if bcx.len() != seq * 3 * width || weights.len() != width * kernel {
            return Err(Error::Compute(format!("a short convolution of {} values over {seq} rows with {} weights", bcx.len(), weights.len())));
        }
        if self.len + seq > self.capacity {
            return Err(Error::PromptTooLong { tokens: self.len + seq, context: self.capacity });
        }
        let vector_taps = kernel / 8 * 8;
        let mut out = vec![0f32; seq * width];
        for (t, row) in bcx.chunks_exact(3 * width).enumerate() {
            let (b, rest) = row.split_at(width);
            let (c, x) = rest.split_at(width);
            // The ring has more rows than the kernel spans, so this position's row overwrites
            // none the convolution below reads.
            let at = self.len;
            let start = at % self.rows * width;
            for ((d, b), x) in self.data[start..start + width].iter_mut().zip(b).zip(x) {
                *d = b * x;
            }
            self.len += 1;
            self.oldest = self.oldest.max(self.len.saturating_sub(self.rows));
            // Taps before position 0 read zeros.
            let first = (at + 1) as isize - kernel as isize;
            let out = &mut out[t * width..][..width];
            for (ch, (o, c)) in out.iter_mut().zip(c).enumerate() {
                let taps = &weights[ch * kernel..][..kernel];
                let mut sum = 0f32;
                for (k, &w) in taps.iter().enumerate() {
                    let p = first + k as isize;
                    let s = if p < 0 { 0.0 } else { self.row(p as usize)[ch] };
                    sum = if k < vector_taps { sum + s * w } else { math::fma(s, w, sum) };
                }
                *o = c * sum;
            }
        }
        Ok(out)
    }
}

/// The state's part in a generation's [`crate::arch::State`]: cut back, grown, saved and
/// restored with the attention layers' caches.
impl KvStore for ConvState {
    /// Forgets every position from `len` on; `false`, changing nothing, when the ring has
    /// overwritten a row the next position would read.
    fn truncate(&mut self, len: usize) -> bool {
        let len = self.len.min(len);
        if self.first_needed(len) < self.oldest {
            return false;
        }
        self.len = len;
        true
    }

    fn clear(&mut self) {
        self.len = 0;
        self.oldest = 0;
    }

    /// The ring grows only while it is smaller than its bound, when it has not wrapped and
    /// each position has its own row.
    fn grow(&mut self, capacity: usize) -> Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let rows = ring_rows(self.kernel, capacity);
        if rows > self.rows {
            let too_large = || Error::KvCacheTooLarge { positions: capacity, bytes: u64::MAX };
            let len = rows.checked_mul(self.width).ok_or_else(too_large)?;
            self.data.try_reserve_exact(len - self.data.len()).map_err(|_| too_large())?;
            self.data.resize(len, 0.0);
            self.rows = rows;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// The `kernel - 1` last positions' rows (what the next position reads), as little-endian
    /// f32 bytes.
    fn save(&self, out: &mut Vec<u8>) {
        for at in self.first_needed(self.len)..self.len {
            self.row(at).iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
    }

    fn saved_positions(&self, len: usize) -> usize {
        len - self.first_needed(len)
    }

    fn restore(&mut self, len: usize, bytes: &[u8]) -> Option<usize> {
        if len > self.capacity {
            return None;
        }
        let first = self.first_needed(len);
        let size = (len - first) * self.width * 4;
        let mut values = bytes.get(..size)?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        for at in first..len {
            let start = at % self.rows * self.width;
            self.data[start..start + self.width].iter_mut().for_each(|v| *v = values.next().unwrap_or(0.0));
        }
        self.len = len;
        self.oldest = first;
        Some(size)
    }

    fn bytes_per_position(&self) -> usize {
        4 * self.width
    }

    fn rows(&self) -> usize {
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition: each channel's output is `c` times the sum over the kernel of its
    /// taps and the `b·x` of the positions they fall on (zero before the first).
    fn reference(bcx: &[f32], width: usize, kernel: usize, weights: &[f32]) -> Vec<f32> {
        let seq = bcx.len() / (3 * width);
        let bx = |t: usize, ch: usize| bcx[t * 3 * width + ch] * bcx[t * 3 * width + 2 * width + ch];
        let mut out = Vec::new();
        for t in 0..seq {
            for ch in 0..width {
                let mut sum = 0f32;
                for k in 0..kernel {
                    let p = (t + k + 1) as isize - kernel as isize;
                    let s = if p < 0 { 0.0 } else { bx(p as usize, ch) };
                    sum = if k < kernel / 8 * 8 { sum + s * weights[ch * kernel + k] } else { math::fma(s, weights[ch * kernel + k], sum) };
                }
                out.push(bcx[t * 3 * width + width + ch] * sum);
            }
        }
        out
    }

    /// A long sequence run whole, run in pieces, and run again after a cut back within and past
    /// the ring, and after a save and restore, gives the same bits as the plain definition.
    #[test]
    fn a_state_convolves_as_the_whole_sequence_does() {
        let mut next = crate::xorshift(0xC04F_2A11);
        let (width, seq) = (5, 150);
        for kernel in [3, 11] {
            let unit = |next: &mut dyn FnMut() -> u64| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            let bcx: Vec<f32> = (0..seq * 3 * width).map(|_| unit(&mut next)).collect();
            let weights: Vec<f32> = (0..width * kernel).map(|_| unit(&mut next)).collect();
            let want = reference(&bcx, width, kernel, &weights);
            let row = 3 * width;

            let mut whole = ConvState::new(width, kernel, 1024).unwrap();
            assert_eq!(whole.rows(), kernel - 1 + RING_PART);
            assert_eq!(whole.convolve(&bcx, seq, &weights).unwrap(), want);

            let mut pieces = ConvState::new(width, kernel, 1024).unwrap();
            let mut got = Vec::new();
            for (i, part) in bcx.chunks(7 * row).enumerate() {
                got.extend(pieces.convolve(part, part.len() / row, &weights).unwrap());
                if i == 10 {
                    // Saved and restored into a fresh state, it goes on as before.
                    let mut bytes = Vec::new();
                    pieces.save(&mut bytes);
                    assert_eq!(bytes.len(), pieces.saved_positions(pieces.len) * pieces.bytes_per_position());
                    let mut fresh = ConvState::new(width, kernel, 8).unwrap();
                    fresh.grow(1024).unwrap();
                    assert_eq!(fresh.restore(pieces.len, &bytes), Some(bytes.len()));
                    pieces = fresh;
                }
            }
            assert_eq!(got, want);

            // Cut back within the ring: the rest gives the same; past it: refused, unchanged.
            let mut back = whole.clone();
            assert!(back.truncate(seq - 20));
            assert_eq!(back.convolve(&bcx[(seq - 20) * row..], 20, &weights).unwrap(), want[(seq - 20) * width..]);
            let mut far = whole.clone();
            assert!(!far.truncate(10));
            assert_eq!(far.len, seq);
            far.clear();
            assert_eq!(far.convolve(&bcx, seq, &weights).unwrap(), want);
        }
    }
}
