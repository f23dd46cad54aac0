//! The seam between what a model computes and the device that computes it.
//!
//! The decoder ([`crate::arch::Weights`]) describes its layers once, as calls on a [`Backend`]:
//! which norms, which products, which attention, in llama.cpp's order. A backend decides where
//! the activations, the weights and the KV cache live and how each operation runs. The CPU
//! backend ([`Cpu`]) runs them on host vectors with the kernels of [`crate::kernels`]; a GPU
//! backend keeps the activations on the device from the embedding to the logits and reads
//! back only what [`Backend::read`] asks for. See `docs/backends.md` for the design.

pub mod cpu;

pub use cpu::Cpu;

use crate::arch::attention::{Rope, Spec};
use crate::arch::{Activation, Experts, Moe};
use crate::bytes::Bytes;
use crate::error::Result;

/// A device that runs the decoder's operations. The decoder is written once against it and
/// monomorphized per backend.
///
/// A `Tensor` is `rows × width` f32 values: one row per position of the batch. Operations that
/// return a tensor leave their inputs as they were; those taking `&mut` work in place. Each
/// operation is defined by the CPU backend's code (its reference): another backend matches it
/// to a tolerance its tests state.
pub trait Backend: Sized {
    /// Activations (and 1-row vectors such as norm weights) on the device.
    type Tensor;
    /// A weight matrix `(rows, cols)` with an optional bias, placed for this device.
    type Matrix: Clone;
    /// One layer's keys and values for the positions filled so far.
    type Cache: KvStore + Clone;

    /// Places a weight matrix of `rows × cols` values in ggml type `ggml_type` (its GGUF
    /// blocks in `bytes`), with `bias` (`rows` values) added to each product; `products` says
    /// what the matrix takes part in, so that the backend can choose a layout for it.
    ///
    /// # Errors
    /// [`crate::Error::InvalidTensor`]-worthy problems (an unsupported type, a size mismatch)
    /// as [`crate::Error::Compute`]; the loader names the tensor.
    fn matrix(&self, ggml_type: u32, bytes: Bytes, rows: usize, cols: usize, bias: Option<Vec<f32>>, products: Products) -> Result<Self::Matrix>;
    /// `(rows, cols)` of a placed matrix.
    fn shape(&self, matrix: &Self::Matrix) -> (usize, usize);
    /// A 1-row tensor of `values` (norm weights).
    ///
    /// # Errors
    /// When the device cannot hold it.
    fn vector(&self, values: Vec<f32>) -> Result<Self::Tensor>;
    /// An empty KV cache for one layer.
    ///
    /// # Errors
    /// [`crate::Error::KvCacheTooLarge`] when the memory is not there.
    fn cache(&self, spec: &CacheSpec) -> Result<Self::Cache>;

    /// The rows of `table` for `tokens`, one row per token.
    ///
    /// # Errors
    /// [`crate::Error::TokenOutOfRange`] for a token outside the table.
    fn embed(&self, table: &Self::Matrix, tokens: &[u32]) -> Result<Self::Tensor>;
    /// `x · wᵀ (+ bias)`: each row of `x` (`cols` wide) to a row of `rows` values.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] on a shape mismatch.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Matrix) -> Result<Self::Tensor>;
    /// Head `h`'s matrix applied to head `h` of every row: `x` is `[rows][heads][cols]`, the
    /// result `[rows][heads][rows of the matrices]` (latent attention's per-head projections).
    ///
    /// # Errors
    /// [`crate::Error::Compute`] on a shape mismatch.
    fn matmul_heads(&self, x: &Self::Tensor, heads: &[Self::Matrix]) -> Result<Self::Tensor>;
    /// RMS norm of each `weight`-wide group of `x` (a row, or a head of it), times `weight`,
    /// summed as llama.cpp sums it; in place.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] on a shape mismatch.
    fn rms_norm(&self, x: &mut Self::Tensor, weight: &Self::Tensor, eps: f32) -> Result<()>;
    /// [`Backend::rms_norm`] into a new tensor.
    ///
    /// # Errors
    /// As [`Backend::rms_norm`].
    fn normed(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// Rotates each `head_dim`-wide head of `x` (`heads` per row, row `r` at position
    /// `pos + r`); in place.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] on a shape mismatch.
    fn rope(&self, x: &mut Self::Tensor, heads: usize, head_dim: usize, pos: usize, rope: &Rope) -> Result<()>;
    /// Appends keys `k` and values `v` (none when the values are the keys' start) at positions
    /// `pos..pos + rows` of `cache`, then attends queries `q` (`[rows][heads][head_dim]`) over
    /// the cache: `[rows][heads][value_dim]`.
    ///
    /// # Errors
    /// [`crate::Error::PromptTooLong`] when the cache is full.
    fn attend(&self, q: &Self::Tensor, k: &Self::Tensor, v: Option<&Self::Tensor>, cache: &mut Self::Cache, pos: usize, spec: &Spec) -> Result<Self::Tensor>;
    /// `activation(gate) · up`, element by element.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] on a shape mismatch.
    fn gated(&self, gate: Self::Tensor, up: &Self::Tensor, activation: Activation) -> Result<Self::Tensor>;
    /// `x += y`.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] on a shape mismatch.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// `x *= by`.
    ///
    /// # Errors
    /// None on the CPU; a device error elsewhere.
    fn scale(&self, x: &mut Self::Tensor, by: f32) -> Result<()>;
    /// Cuts each `sum(widths)`-wide group of `x` into parts of `widths`: one tensor per part,
    /// the parts of consecutive groups one after the other.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] when `x` is not made of such groups.
    fn split(&self, x: &Self::Tensor, widths: &[usize]) -> Result<Vec<Self::Tensor>>;
    /// Group `i` of `a` (`a_width` wide) followed by group `i / repeat_b` of `b` (`b_width`
    /// wide), for every group of `a`; rows as in `a`.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] on a shape mismatch.
    fn join(&self, a: &Self::Tensor, a_width: usize, b: &Self::Tensor, b_width: usize, repeat_b: usize) -> Result<Self::Tensor>;
    /// A mixture of experts over `x`: routing by [`crate::arch`]'s rules, each token through
    /// its experts, the weighted sum plus the shared experts.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] when a product fails, or when the device has no such
    /// operation.
    fn experts(&self, x: &Self::Tensor, moe: &Moe<Self>, spec: &Experts, activation: Activation) -> Result<Self::Tensor>;
    /// Rows `from..` of `x`.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] when `from` is past the last row.
    fn tail(&self, x: Self::Tensor, from: usize) -> Result<Self::Tensor>;
    /// Every value of `x`, row after row, on the host: the end of a forward pass.
    ///
    /// # Errors
    /// A device error.
    fn read(&self, x: &Self::Tensor) -> Result<Vec<f32>>;
}

/// What a matrix takes part in: how much a layout of its own would pay back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Products {
    /// A prompt's rows at once, then one row per decoded token: the layers.
    Batched,
    /// One activation row at a time: the output layer, which only the last position goes
    /// through.
    OneRow,
    /// Used as it is in the file: the experts (most of a mixture's bytes, a few rows each)
    /// and an embedding table that is only looked up.
    InPlace,
}

/// The shape of one layer's KV cache.
#[derive(Clone, Copy, Debug)]
pub struct CacheSpec {
    /// Key-value heads.
    pub kv_heads: usize,
    /// Positions it holds.
    pub capacity: usize,
    /// Width of a key.
    pub head_dim: usize,
    /// Width of a value.
    pub value_dim: usize,
    /// Whether a value is the start of its key (latent attention), not stored twice.
    pub values_in_keys: bool,
}

/// What a generation's state does with one layer's cache, on any device.
pub trait KvStore {
    /// Forgets every position from `len` on.
    fn truncate(&mut self, len: usize);
    /// Makes room for `capacity` positions, keeping those filled.
    ///
    /// # Errors
    /// [`crate::Error::KvCacheTooLarge`] when the memory is not there.
    fn grow(&mut self, capacity: usize) -> Result<()>;
    /// Appends the filled positions to `out` (f16, little-endian).
    fn save(&self, out: &mut Vec<u8>);
    /// Fills the first `len` positions from `bytes`; the bytes used, or `None` when there are
    /// too few.
    fn restore(&mut self, len: usize, bytes: &[u8]) -> Option<usize>;
    /// Bytes one position takes.
    fn bytes_per_position(&self) -> usize;
}
