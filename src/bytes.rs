//! Shared, immutable byte ranges: the data of a weight tensor.
//!
//! A tensor read from a file owns its buffer; a tensor of a model read from bytes in memory
//! (the browser's fetched file) is a window on that one buffer, so the model holds no second
//! copy of its weights.

use std::ops::{Deref, Range};
use std::sync::Arc;

/// A cheaply cloned view of a range of a shared buffer.
#[derive(Clone)]
pub struct Bytes {
    buffer: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl Bytes {
    /// The bytes `range` of this view, sharing the buffer; `None` when `range` does not fit.
    pub fn slice(&self, range: Range<usize>) -> Option<Bytes> {
        if range.start > range.end || range.end > self.len() {
            return None;
        }
        Some(Bytes { buffer: self.buffer.clone(), range: self.range.start + range.start..self.range.start + range.end })
    }
}

impl From<Vec<u8>> for Bytes {
    /// Takes the vector without copying its contents.
    fn from(bytes: Vec<u8>) -> Bytes {
        let range = 0..bytes.len();
        Bytes { buffer: Arc::new(bytes), range }
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buffer[self.range.clone()]
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
    }
}
