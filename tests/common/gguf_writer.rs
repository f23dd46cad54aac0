//! Writes small GGUF files for tests: any metadata, any tensors, or deliberately broken bytes.

/// A metadata value to write.
#[derive(Clone, Debug)]
pub enum Meta {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
    /// A raw value: type id and its encoded bytes.
    Raw(u32, Vec<u8>),
}

pub fn s(v: &str) -> Meta {
    Meta::Str(v.to_string())
}

/// A tensor to write: name, dims (innermost first), ggml type, data bytes.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: Vec<(String, Meta)>,
    pub tensors: Vec<Tensor>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Meta) {
    match v {
        Meta::U32(x) => { out.extend(4u32.to_le_bytes()); out.extend(x.to_le_bytes()); }
        Meta::I32(x) => { out.extend(5u32.to_le_bytes()); out.extend(x.to_le_bytes()); }
        Meta::U64(x) => { out.extend(10u32.to_le_bytes()); out.extend(x.to_le_bytes()); }
        Meta::F32(x) => { out.extend(6u32.to_le_bytes()); out.extend(x.to_le_bytes()); }
        Meta::Bool(x) => { out.extend(7u32.to_le_bytes()); out.push(*x as u8); }
        Meta::Str(x) => { out.extend(8u32.to_le_bytes()); put_str(out, x); }
        Meta::Strs(xs) => {
            out.extend(9u32.to_le_bytes()); out.extend(8u32.to_le_bytes()); out.extend((xs.len() as u64).to_le_bytes());
            for x in xs { put_str(out, x); }
        }
        Meta::F32s(xs) => {
            out.extend(9u32.to_le_bytes()); out.extend(6u32.to_le_bytes()); out.extend((xs.len() as u64).to_le_bytes());
            for x in xs { out.extend(x.to_le_bytes()); }
        }
        Meta::I32s(xs) => {
            out.extend(9u32.to_le_bytes()); out.extend(5u32.to_le_bytes()); out.extend((xs.len() as u64).to_le_bytes());
            for x in xs { out.extend(x.to_le_bytes()); }
        }
        Meta::Raw(t, bytes) => { out.extend(t.to_le_bytes()); out.extend(bytes); }
    }
}

impl GgufFile {
    pub fn new() -> GgufFile {
        GgufFile { version: 3, ..Default::default() }
    }

    pub fn meta(mut self, key: &str, v: Meta) -> Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), v));
        self
    }

    pub fn without(mut self, key: &str) -> Self {
        self.metadata.retain(|(k, _)| k != key);
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, data: Vec<u8>) -> Self {
        self.tensors.push(Tensor { name: name.to_string(), dims: dims.to_vec(), ggml_type, data });
        self
    }

    /// The file's bytes, with tensor data aligned to 32 bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let infos: Vec<(&str, &[u64], u32, u64)> = self.tensors.iter().map(|t| (t.name.as_str(), t.dims.as_slice(), t.ggml_type, t.data.len() as u64)).collect();
        let mut out = header(self.version, &self.metadata, &infos);
        for t in &self.tensors {
            out.extend(&t.data);
            while !out.len().is_multiple_of(ALIGNMENT as usize) { out.push(0); }
        }
        out
    }
}

/// GGUF's default alignment of tensor data (`general.alignment` unset).
pub const ALIGNMENT: u64 = 32;

/// Everything before the tensor data: magic, version, counts, metadata, and each tensor's
/// (name, dims innermost first, ggml type, data bytes) with its offset, padded to [`ALIGNMENT`].
/// Each tensor's data then starts at the next multiple of [`ALIGNMENT`] (see [`data_len`]).
pub fn header(version: u32, metadata: &[(String, Meta)], tensors: &[(&str, &[u64], u32, u64)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(version.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    for (name, dims, ggml_type, bytes) in tensors {
        put_str(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in *dims { out.extend(d.to_le_bytes()); }
        out.extend(ggml_type.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += bytes.div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    while !(out.len() as u64).is_multiple_of(ALIGNMENT) { out.push(0); }
    out
}

/// The length of the tensor-data section for tensors of these byte sizes.
pub fn data_len(sizes: impl IntoIterator<Item = u64>) -> u64 {
    sizes.into_iter().map(|b| b.div_ceil(ALIGNMENT) * ALIGNMENT).sum()
}

/// A tiny but complete gpt2-style tokenizer's metadata: bytes 'a'..'e', space, and merges.
pub fn tiny_gpt2() -> GgufFile {
    let tokens: Vec<String> = ["a", "b", "c", "d", "e", "Ġ", "ab", "abc", "Ġa", "<|im_start|>", "<|im_end|>"].iter().map(|s| s.to_string()).collect();
    let types = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3];
    GgufFile::new()
        .meta("general.architecture", s("llama"))
        .meta("llama.context_length", Meta::U32(128))
        .meta("tokenizer.ggml.model", s("gpt2"))
        .meta("tokenizer.ggml.pre", s("smollm"))
        .meta("tokenizer.ggml.tokens", Meta::Strs(tokens))
        .meta("tokenizer.ggml.token_type", Meta::I32s(types))
        .meta("tokenizer.ggml.merges", Meta::Strs(vec!["a b".into(), "ab c".into(), "Ġ a".into()]))
        .meta("tokenizer.ggml.bos_token_id", Meta::U32(9))
        .meta("tokenizer.ggml.eos_token_id", Meta::U32(10))
        .tensor("token_embd.weight", &[8, 11], 0, vec![0u8; 8 * 11 * 4]) // 352 bytes: no padding after it
}

/// A tiny SentencePiece-style tokenizer's metadata.
pub fn tiny_spm() -> GgufFile {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (t, sc) in [("▁", -1.0f32), ("a", -2.0), ("b", -3.0), ("ab", -1.5), ("▁ab", -0.5)] {
        tokens.push(t.to_string());
        types.push(1);
        scores.push(sc);
    }
    GgufFile::new()
        .meta("general.architecture", s("llama"))
        .meta("tokenizer.ggml.model", s("llama"))
        .meta("tokenizer.ggml.tokens", Meta::Strs(tokens))
        .meta("tokenizer.ggml.token_type", Meta::I32s(types))
        .meta("tokenizer.ggml.scores", Meta::F32s(scores))
        .meta("tokenizer.ggml.bos_token_id", Meta::U32(1))
        .meta("tokenizer.ggml.eos_token_id", Meta::U32(2))
        .meta("tokenizer.ggml.unknown_token_id", Meta::U32(0))
}
