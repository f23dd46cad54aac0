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
    /// A short-convolution layer's recurrent state: what it keeps of the positions filled so
    /// far (LFM2).
    type Conv: KvStore + Clone;

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
    /// An empty recurrent state for a short-convolution layer of `width` channels whose kernel
    /// spans `kernel` positions, for up to `capacity` positions.
    ///
    /// # Errors
    /// [`crate::Error::KvCacheTooLarge`] when the memory is not there.
    fn conv_state(&self, width: usize, kernel: usize, capacity: usize) -> Result<Self::Conv>;

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
    /// [`Backend::matmul`] of the same `x` by each of `ws` (a layer's query, key and value
    /// projections), which a backend may run together.
    ///
    /// # Errors
    /// [`crate::Error::Compute`] on a shape mismatch.
    fn matmuls(&self, x: &Self::Tensor, ws: &[&Self::Matrix]) -> Result<Vec<Self::Tensor>> {
        ws.iter().map(|w| self.matmul(x, w)).collect()
    }
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
    /// LFM2's gated short convolution at the next positions of `state`: `bcx` is
    /// `[rows][3·width]`, each row's parts `b`, `c`, `x`; each row's `b·x` is remembered in
    /// `state` and convolved channel by channel with `weights` (`[width][kernel]`) over the last
    /// `kernel` positions, times `c`: `[rows][width]` ([`crate::arch::conv::ConvState::convolve`]).
    ///
    /// # Errors
    /// [`crate::Error::PromptTooLong`] when the state is full; [`crate::Error::Compute`] on a
    /// shape mismatch.
    fn short_conv(&self, bcx: &Self::Tensor, weights: &Self::Tensor, state: &mut Self::Conv) -> Result<Self::Tensor>;
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
    /// `x` soft-capped to `±cap`, in place: [`crate::arch::attention::soft_cap`] (Gemma 2's
    /// final logits).
    ///
    /// # Errors
    /// None on the CPU; a device error elsewhere.
    fn soft_cap(&self, x: &mut Self::Tensor, cap: f32) -> Result<()>;
    /// Each `width`-wide row `i` of `x` times `by(i)`, in place (Mistral 3's attention
    /// temperature, by position).
    ///
    /// # Errors
    /// None on the CPU; a device error elsewhere.
    fn scale_rows(&self, x: &mut Self::Tensor, width: usize, by: &dyn Fn(usize) -> f32) -> Result<()>;
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
    /// its experts, the weighted sum plus the shared experts (weighed by their gate, when the
    /// mixture has one).
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
    /// Positions a query sees at most, when the layer is a sliding-window layer (or a chunked
    /// one, whose queries see their chunk's start: at most a chunk back): its cache is then a
    /// ring of [`CacheSpec::rows`] rows.
    pub window: Option<usize>,
}

impl CacheSpec {
    /// Positions of memory the cache needs: `capacity`, or for a sliding-window layer at most
    /// the window's last `window - 1` positions and one part of a batch
    /// ([`crate::arch::attention::RING_PART`]) to attend over.
    pub fn rows(&self) -> usize {
        match self.window {
            Some(w) => self.capacity.min(w.saturating_sub(1) + crate::arch::attention::RING_PART),
            None => self.capacity,
        }
    }
}

/// What a generation's state does with one layer's memory (an attention layer's keys and
/// values, a convolution layer's recurrent state), on any device.
pub trait KvStore {
    /// Forgets every position from `len` on; `false` when it cannot (a sliding-window ring
    /// that has overwritten what the next query would see), and it is then unchanged.
    fn truncate(&mut self, len: usize) -> bool;
    /// Forgets every position.
    fn clear(&mut self);
    /// Makes room for `capacity` positions, keeping those filled.
    ///
    /// # Errors
    /// [`crate::Error::KvCacheTooLarge`] when the memory is not there.
    fn grow(&mut self, capacity: usize) -> Result<()>;
    /// Appends the filled positions it keeps ([`KvStore::saved_positions`]) to `out`
    /// (little-endian; keys and values as f16, a convolution's state as f32).
    fn save(&self, out: &mut Vec<u8>);
    /// How many of `len` filled positions a save keeps: all, a sliding-window layer's last
    /// `window - 1`, or a convolution's last `kernel - 1`.
    fn saved_positions(&self, len: usize) -> usize;
    /// Fills the cache to `len` positions from what a save wrote; the bytes used, or `None`
    /// when there are too few.
    fn restore(&mut self, len: usize, bytes: &[u8]) -> Option<usize>;
    /// Bytes one position takes.
    fn bytes_per_position(&self) -> usize;
    /// Positions it has memory for.
    fn rows(&self) -> usize;
}
