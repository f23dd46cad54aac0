//! Reading a GGUF file's header: metadata and tensor descriptions.
//!
//! Every length and count in the header is untrusted. Before anything is allocated or read, the
//! reader checks the claim against the bytes that remain in the stream, so a corrupt or hostile
//! header yields an [`Error`] rather than a panic or an allocation sized by an attacker.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use crate::error::{Error, Result};

/// The four bytes every GGUF file starts with.
const MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of the tensor data when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are rejected (real files nest at most once).
const MAX_ARRAY_DEPTH: u32 = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float32`
    F32(f32),
    /// `float64`
    F64(f64),
    /// `bool`
    Bool(bool),
    /// `string` (UTF-8)
    String(String),
    /// `array` of values of one type.
    Array(Vec<Value>),
}

impl Value {
    /// The GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "uint8",
            Value::I8(_) => "int8",
            Value::U16(_) => "uint16",
            Value::I16(_) => "int16",
            Value::U32(_) => "uint32",
            Value::I32(_) => "int32",
            Value::U64(_) => "uint64",
            Value::I64(_) => "int64",
            Value::F32(_) => "float32",
            Value::F64(_) => "float64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// The value as a signed integer, when it is an integer of any width.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float, when it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            // Integers as floats: precision loss past 2^53 is irrelevant for hyper-parameters.
            _ => self.as_i128().map(|v| v as f64),
        }
    }
}

/// Where one tensor lives in the file and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as ggml orders them.
    pub dims: Vec<u64>,
    /// The ggml type id (0 = F32, 1 = F16, 2 = Q4_0, 12 = Q4_K, …).
    pub ggml_type: u32,
    /// Offset of the data from the start of the tensor-data section of its file.
    pub offset: u64,
    /// Which file of a split model holds the data (0 for the first, or only, file).
    pub shard: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The bytes a ggml type takes for one block, and the elements in a block, for the types whose
/// layout is fixed. `None` for types this reader does not size.
pub fn ggml_type_block(ggml_type: u32) -> Option<(u64, u64)> {
    // (elements per block, bytes per block)
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        39 => (32, 17),   // MXFP4
        _ => return None,
    })
}

/// The most shards a split model may have (gguf-split numbers them with five digits).
pub const MAX_SHARDS: u64 = 99_999;

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: HashMap<String, Value>,
    /// Tensor descriptions in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the tensor-data section.
    pub data_offset: u64,
}

/// A reader that knows how many bytes remain, so every untrusted length can be checked first.
struct Header<'a, R> {
    inner: &'a mut R,
    pos: u64,
    len: u64,
}

impl<R: Read> Header<'_, R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails unless `bytes` more bytes are in the stream.
    fn need(&self, bytes: u64, what: &dyn Fn() -> String) -> Result<()> {
        if bytes > self.remaining() {
            return Err(Error::Truncated { what: what() });
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|e| eof_as_truncated(e, what))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        // The length is checked against what remains before the buffer is allocated.
        self.need(len, &|| format!("{} ({len} bytes of string)", what()))?;
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf).map_err(|e| eof_as_truncated(e, what))?;
        self.pos += len;
        String::from_utf8(buf).map_err(|_| Error::Corrupt { reason: format!("{} is not valid UTF-8", what()) })
    }

    fn value(&mut self, type_id: u32, depth: u32, what: &dyn Fn() -> String) -> Result<Value> {
        Ok(match type_id {
            0 => Value::U8(self.bytes::<1>(what)?[0]),
            1 => Value::I8(self.bytes::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.bytes(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.bytes(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.bytes(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes(what)?)),
            7 => match self.bytes::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::Corrupt { reason: format!("{} is a bool with byte {b}", what()) }),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::Corrupt { reason: format!("{} nests arrays deeper than {MAX_ARRAY_DEPTH}", what()) });
                }
                let elem_type = self.u32(what)?;
                let count = self.u64(what)?;
                let min_size = min_value_size(elem_type)
                    .ok_or_else(|| Error::Corrupt { reason: format!("{} is an array of unknown type {elem_type}", what()) })?;
                // Each element takes at least `min_size` bytes: a count the rest of the file
                // cannot hold is rejected before any allocation.
                if count.checked_mul(min_size).is_none_or(|bytes| bytes > self.remaining()) {
                    return Err(Error::Truncated {
                        what: format!("{} (an array of {count} elements does not fit in the {} bytes left)", what(), self.remaining()),
                    });
                }
                let mut items = Vec::with_capacity(count as usize);
                for i in 0..count {
                    items.push(self.value(elem_type, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.bytes(what)?)),
            11 => Value::I64(i64::from_le_bytes(self.bytes(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes(what)?)),
            t => return Err(Error::Corrupt { reason: format!("{} has unknown value type {t}", what()) }),
        })
    }
}

/// The fewest bytes a value of a GGUF type can occupy.
fn min_value_size(type_id: u32) -> Option<u64> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,      // the length prefix of an empty string
        9 => 4 + 8,  // element type and count of an empty array
        10..=12 => 8,
        _ => return None,
    })
}

fn eof_as_truncated(e: std::io::Error, what: &dyn Fn() -> String) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Truncated { what: what() }
    } else {
        Error::Io(e)
    }
}

impl Gguf {
    /// Reads the header (metadata and tensor descriptions) from the start of `reader`, leaving
    /// the tensor data unread.
    ///
    /// # Errors
    /// [`Error::BadMagic`], [`Error::UnsupportedVersion`], [`Error::Truncated`] or
    /// [`Error::Corrupt`] when the bytes are not a well-formed GGUF v2/v3 header, and
    /// [`Error::Io`] when reading fails.
    pub fn read<R: Read + Seek>(reader: &mut R) -> Result<Gguf> {
        let start = reader.stream_position()?;
        let len = reader.seek(SeekFrom::End(0))?;
        reader.seek(SeekFrom::Start(start))?;
        let mut h = Header { inner: reader, pos: start, len };

        let magic = h.bytes::<4>(&|| "the magic number".into())?;
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = h.u32(&|| "the version".into())?;
        if !(2..=3).contains(&version) {
            return Err(Error::UnsupportedVersion { version });
        }
        let tensor_count = h.u64(&|| "the tensor count".into())?;
        let kv_count = h.u64(&|| "the metadata count".into())?;
        // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor
        // description at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset).
        let claimed = kv_count.checked_mul(13).zip(tensor_count.checked_mul(24)).and_then(|(a, b)| a.checked_add(b));
        if claimed.is_none_or(|bytes| bytes > h.remaining()) {
            return Err(Error::Truncated {
                what: format!(
                    "the {kv_count} metadata entries and {tensor_count} tensors the header claims (the {} bytes left cannot hold them)",
                    h.remaining()
                ),
            });
        }

        let mut metadata = HashMap::with_capacity(kv_count as usize);
        for i in 0..kv_count {
            let key = h.string(&|| format!("the key of metadata entry #{i}"))?;
            let type_id = h.u32(&|| format!("the type of metadata `{key}`"))?;
            let value = h.value(type_id, 0, &|| format!("metadata `{key}`"))?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(Error::Corrupt { reason: format!("metadata key `{key}` appears twice") });
            }
        }

        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for i in 0..tensor_count {
            let name = h.string(&|| format!("the name of tensor #{i}"))?;
            let n_dims = h.u32(&|| format!("the dimension count of tensor `{name}`"))?;
            if n_dims > MAX_DIMS {
                return Err(Error::Corrupt { reason: format!("tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})") });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(h.u64(&|| format!("the dimensions of tensor `{name}`"))?);
            }
            let ggml_type = h.u32(&|| format!("the type of tensor `{name}`"))?;
            let offset = h.u64(&|| format!("the offset of tensor `{name}`"))?;
            tensors.push(TensorInfo { name, dims, ggml_type, offset, shard: 0 });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i128() {
                Some(a) if a > 0 && a <= 1 << 20 && (a as u64).is_power_of_two() => a as u64,
                _ => {
                    return Err(Error::InvalidMetadata {
                        key: "general.alignment".into(),
                        reason: format!("{v:?} is not a power of two up to 1 MiB"),
                    })
                }
            },
        };
        let data_offset = h.pos.div_ceil(alignment) * alignment;
        let data_len = len.saturating_sub(data_offset);
        for t in &tensors {
            check_tensor_extent(t, alignment, data_len)?;
        }

        Ok(Gguf { version, metadata, tensors, data_offset })
    }

    /// The `split.*` keys of a file written by gguf-split: `(split.no, split.count,
    /// split.tensors.count)`, or `None` for a file that is not one of several.
    ///
    /// # Errors
    /// [`Error::InvalidMetadata`] when the keys are inconsistent.
    pub fn split(&self) -> Result<Option<(usize, usize, u64)>> {
        let Some(count) = self.opt_u64("split.count")? else { return Ok(None) };
        let no = self.opt_u64("split.no")?.unwrap_or(0);
        let tensors = self.opt_u64("split.tensors.count")?.unwrap_or(self.tensors.len() as u64);
        if count == 0 || count > MAX_SHARDS || no >= count {
            return Err(Error::InvalidMetadata { key: "split.no".into(), reason: format!("shard {no} of {count} (at most {MAX_SHARDS} shards)") });
        }
        Ok((count > 1).then_some((no as usize, count as usize, tensors)))
    }

    /// The header of a split model: the first shard's header (which holds the metadata) with
    /// the tensors of every shard, each marked with the shard that holds its data.
    ///
    /// # Errors
    /// [`Error::InvalidMetadata`] when a shard's `split.no` is out of order, the shards
    /// disagree on `split.count`, or the tensors do not add up to `split.tensors.count`;
    /// [`Error::Corrupt`] when a tensor name appears in two shards.
    pub fn join_split(shards: Vec<Gguf>) -> Result<Gguf> {
        let given = shards.len();
        let mut shards = shards.into_iter();
        let Some(mut joined) = shards.next() else { return Err(Error::Corrupt { reason: "a split model without shards".into() }) };
        let Some((0, count, total)) = joined.split()? else {
            return Err(Error::InvalidMetadata { key: "split.no".into(), reason: "the first file is not the first shard of a split model".into() });
        };
        let mut names: std::collections::HashSet<String> = joined.tensors.iter().map(|t| t.name.clone()).collect();
        for (i, shard) in shards.enumerate().map(|(i, s)| (i + 1, s)) {
            match shard.split()? {
                Some((no, c, _)) if no == i && c == count => {}
                found => {
                    return Err(Error::InvalidMetadata {
                        key: "split.no".into(),
                        reason: format!("shard {} of {count} says it is {:?} (split.no, split.count)", i + 1, found.map(|(no, c, _)| (no + 1, c))),
                    })
                }
            }
            for mut t in shard.tensors {
                if !names.insert(t.name.clone()) {
                    return Err(Error::Corrupt { reason: format!("tensor `{}` appears in two shards", t.name) });
                }
                t.shard = i;
                joined.tensors.push(t);
            }
        }
        if given != count {
            return Err(Error::InvalidMetadata { key: "split.count".into(), reason: format!("{count} shards declared, {given} given") });
        }
        if joined.tensors.len() as u64 != total {
            return Err(Error::InvalidMetadata {
                key: "split.tensors.count".into(),
                reason: format!("{total} tensors declared, the {count} shards hold {}", joined.tensors.len()),
            });
        }
        Ok(joined)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::MissingMetadata { key: key.to_string() })
    }

    /// The string at `key`.
    ///
    /// # Errors
    /// [`Error::MissingMetadata`] or [`Error::MetadataType`].
    pub fn str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            v => Err(mistyped(key, "string", v)),
        }
    }

    /// The string at `key`, or `None` when absent.
    ///
    /// # Errors
    /// [`Error::MetadataType`] when present with another type.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|_| self.str(key)).transpose()
    }

    /// The unsigned integer at `key`; any integer type is accepted if the value fits.
    ///
    /// # Errors
    /// [`Error::MissingMetadata`], [`Error::MetadataType`], or [`Error::InvalidMetadata`] for
    /// a negative or too-large value.
    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        let n = v.as_i128().ok_or_else(|| mistyped(key, "integer", v))?;
        u64::try_from(n).map_err(|_| Error::InvalidMetadata { key: key.into(), reason: format!("{n} is not a non-negative integer") })
    }

    /// The unsigned integer at `key`, or `None` when absent.
    ///
    /// # Errors
    /// As [`Gguf::u64`], when the key is present.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|_| self.u64(key)).transpose()
    }

    /// The float at `key` (float or integer types).
    ///
    /// # Errors
    /// [`Error::MissingMetadata`] or [`Error::MetadataType`].
    pub fn f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| mistyped(key, "float", v))
    }

    /// The float at `key`, or `None` when absent.
    ///
    /// # Errors
    /// [`Error::MetadataType`] when present with a non-numeric type.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|_| self.f64(key)).transpose()
    }

    /// The bool at `key`, or `None` when absent.
    ///
    /// # Errors
    /// [`Error::MetadataType`] when present with another type.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(mistyped(key, "bool", v)),
        }
    }

    /// The array at `key`.
    ///
    /// # Errors
    /// [`Error::MissingMetadata`] or [`Error::MetadataType`].
    pub fn array(&self, key: &str) -> Result<&[Value]> {
        match self.require(key)? {
            Value::Array(items) => Ok(items),
            v => Err(mistyped(key, "array", v)),
        }
    }

    /// The array of strings at `key`.
    ///
    /// # Errors
    /// [`Error::MissingMetadata`], or [`Error::MetadataType`] when it is not an array of strings.
    pub fn str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(mistyped(key, "array of string", v)),
            })
            .collect()
    }

    /// The numeric array at `key`, as floats.
    ///
    /// # Errors
    /// [`Error::MissingMetadata`], or [`Error::MetadataType`] when an element is not numeric.
    pub fn f64_array(&self, key: &str) -> Result<Vec<f64>> {
        self.array(key)?.iter().map(|v| v.as_f64().ok_or_else(|| mistyped(key, "array of numbers", v))).collect()
    }

    /// The integer array at `key`.
    ///
    /// # Errors
    /// [`Error::MissingMetadata`], or [`Error::MetadataType`] when an element is not an integer.
    pub fn int_array(&self, key: &str) -> Result<Vec<i128>> {
        self.array(key)?.iter().map(|v| v.as_i128().ok_or_else(|| mistyped(key, "array of integers", v))).collect()
    }

    /// `general.architecture`.
    ///
    /// # Errors
    /// [`Error::MissingMetadata`] or [`Error::MetadataType`].
    pub fn architecture(&self) -> Result<&str> {
        self.str("general.architecture")
    }
}

fn mistyped(key: &str, expected: &'static str, found: &Value) -> Error {
    Error::MetadataType { key: key.to_string(), expected, found: found.type_name() }
}

/// Checks that a tensor's data lies inside the file, for the types whose size is known.
fn check_tensor_extent(t: &TensorInfo, alignment: u64, data_len: u64) -> Result<()> {
    let corrupt = |reason: String| Error::Corrupt { reason: format!("tensor `{}` {reason}", t.name) };
    if !t.offset.is_multiple_of(alignment) {
        return Err(corrupt(format!("starts at offset {}, not a multiple of the alignment {alignment}", t.offset)));
    }
    let elements = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| corrupt(format!("has impossible dimensions {:?}", t.dims)))?;
    let Some((block_elems, block_bytes)) = ggml_type_block(t.ggml_type) else {
        // Sized when its weights are loaded; the loader rejects types it cannot run.
        return Ok(());
    };
    let row = t.dims.first().copied().unwrap_or(1);
    if row % block_elems != 0 {
        return Err(corrupt(format!("has rows of {row} elements, not a multiple of its block size {block_elems}")));
    }
    let bytes = (elements / block_elems).checked_mul(block_bytes);
    match bytes.and_then(|b| t.offset.checked_add(b)) {
        Some(end) if end <= data_len => Ok(()),
        _ => Err(Error::Truncated { what: format!("the data of tensor `{}`", t.name) }),
    }
}
