//! The key/value cache: one buffer per layer, allocated once at the length the caller sets and
//! written in place, never re-concatenated per token.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Keys and values of one layer: `[kv_heads, capacity, head_dim]` each.
pub struct KvCache {
    keys: Tensor,
    values: Tensor,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for `capacity` positions.
    pub fn new(kv_heads: usize, capacity: usize, head_dim: usize, value_dim: usize) -> Result<KvCache> {
        Ok(KvCache {
            keys: Tensor::zeros((kv_heads, capacity, head_dim), DType::F32, &Device::Cpu)?,
            values: Tensor::zeros((kv_heads, capacity, value_dim), DType::F32, &Device::Cpu)?,
            len: 0,
            capacity,
        })
    }

    /// Writes `k` (`[kv_heads, n, head_dim]`) and `v` at the end and returns views of every
    /// cached key and value (`[kv_heads, len, …]`).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(1)?;
        if self.len + n > self.capacity {
            return Err(Error::PromptTooLong { tokens: self.len + n, context: self.capacity });
        }
        self.keys.slice_set(&k.contiguous()?, 1, self.len)?;
        self.values.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len += n;
        Ok((self.keys.narrow(1, 0, self.len)?, self.values.narrow(1, 0, self.len)?))
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}
