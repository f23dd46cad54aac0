//! The kernel seam: every quantized matrix product and embedding lookup of the models goes
//! through [`QLinear`] and [`QEmbedding`], so faster kernels can replace Candle's here without
//! touching model code.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Tensor};

use crate::error::Result;

/// A linear layer `y = x · Wᵀ (+ b)` over a quantized weight of shape `(out, in)`.
pub struct QLinear {
    weight: QMatMul,
    bias: Option<Tensor>,
    out_features: usize,
}

impl QLinear {
    /// A layer over `weight` (shape `(out, in)`), with an optional bias of shape `(out,)`.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] when the weight is not two-dimensional.
    pub fn new(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<QLinear> {
        let (out_features, _) = weight.shape().dims2()?;
        Ok(QLinear { weight: QMatMul::from_arc(weight)?, bias, out_features })
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] on a shape mismatch.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Rows of the weight (the output width).
    pub fn out_features(&self) -> usize {
        self.out_features
    }
}

/// A token-embedding table kept quantized; rows are dequantized as they are looked up.
pub struct QEmbedding {
    table: Arc<QTensor>,
}

impl QEmbedding {
    /// A table of shape `(vocab, hidden)`.
    pub fn new(table: Arc<QTensor>) -> QEmbedding {
        QEmbedding { table }
    }

    /// The rows of `ids`: `[ids.len(), hidden]`.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] when an id is outside the table.
    pub fn lookup(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, &self.table.device())?;
        Ok(self.table.embedding(&ids)?)
    }

    /// The table, for an output layer tied to the embedding.
    pub fn table(&self) -> Arc<QTensor> {
        self.table.clone()
    }
}
