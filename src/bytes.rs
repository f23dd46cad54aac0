//! Shared, immutable byte ranges: the data of a weight tensor.
//!
//! A model's tensors are windows on the buffer that holds its file — natively a read-only
//! memory map of the file (`native.rs`), in the browser the fetched bytes — so the model holds
//! no second copy of its weights. A tensor read from a plain reader owns a buffer of its own.

use std::ops::{Deref, Range};
use std::sync::Arc;

/// Where the bytes of a [`Bytes`] live: an owned vector, or memory the target provides (a
/// memory-mapped file natively).
pub trait Backing: Send + Sync {
    /// The whole buffer.
    fn bytes(&self) -> &[u8];

    /// A hint that `range` will not be read again soon (its data was copied elsewhere): a
    /// memory map gives those pages back to the page cache, so they no longer count in the
    /// process's resident memory. Reading the range later still works. The default does
    /// nothing.
    fn release(&self, _range: Range<usize>) {}
}

impl Backing for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A cheaply cloned view of a range of a shared buffer.
#[derive(Clone)]
pub struct Bytes {
    buffer: Arc<dyn Backing>,
    range: Range<usize>,
}

impl Bytes {
    /// A view of the whole of `backing`.
    pub fn from_backing(backing: Arc<dyn Backing>) -> Bytes {
        let range = 0..backing.bytes().len();
        Bytes { buffer: backing, range }
    }

    /// The bytes `range` of this view, sharing the buffer; `None` when `range` does not fit.
    pub fn slice(&self, range: Range<usize>) -> Option<Bytes> {
        if range.start > range.end || range.end > self.len() {
            return None;
        }
        Some(Bytes { buffer: self.buffer.clone(), range: self.range.start + range.start..self.range.start + range.end })
    }

    /// Tells the buffer that this view's bytes will not be read again soon (see
    /// [`Backing::release`]); the view stays valid.
    pub fn release(&self) {
        self.buffer.release(self.range.clone());
    }
}

impl From<Vec<u8>> for Bytes {
    /// Takes the vector without copying its contents.
    fn from(bytes: Vec<u8>) -> Bytes {
        Bytes::from_backing(Arc::new(bytes))
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // The range was checked against the buffer's length when the view was made, and the
        // buffer never changes.
        self.buffer.bytes().get(self.range.clone()).unwrap_or_default()
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_the_buffer_and_reject_ranges_outside_it() {
        let whole = Bytes::from((0u8..10).collect::<Vec<_>>());
        let middle = whole.slice(2..7).unwrap();
        assert_eq!(&middle[..], &[2, 3, 4, 5, 6]);
        assert_eq!(&middle.slice(1..3).unwrap()[..], &[3, 4]);
        assert!(Arc::ptr_eq(&whole.buffer, &middle.buffer));
        assert!(middle.slice(4..6).is_none());
        assert!(whole.slice(3..11).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = whole.slice(5..4);
        assert!(reversed.is_none());
        middle.release();
        assert_eq!(&middle[..], &[2, 3, 4, 5, 6], "a released view is still readable");
    }
}
