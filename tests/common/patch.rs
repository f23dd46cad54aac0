//! Edits to a real GGUF file's header in memory, for tests of extreme values: a metadata
//! number, a tensor's dimension or offset. Plain std, so the wasm tests use it too.

/// Where the value of the u32 metadata entry `key` starts.
fn u32_value_at(file: &[u8], key: &str) -> usize {
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key.as_bytes());
    let at = file.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("no metadata `{key}`"));
    let type_at = at + needle.len();
    assert_eq!(file[type_at..type_at + 4], 4u32.to_le_bytes(), "`{key}` is not a u32");
    type_at + 4
}

/// Sets the u32 metadata entry `key` (e.g. `llama.context_length`) to `value`.
pub fn set_u32(file: &mut [u8], key: &str, value: u32) {
    let at = u32_value_at(file, key);
    file[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Where tensor `name`'s info starts after its name: its dimension count.
fn tensor_info_at(file: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    // The last occurrence: tensor infos follow the metadata.
    let at = file.windows(needle.len()).rposition(|w| w == needle).unwrap_or_else(|| panic!("no tensor `{name}`"));
    at + needle.len()
}

/// Sets dimension `dim` (innermost first) of tensor `name` to `value`.
pub fn set_dim(file: &mut [u8], name: &str, dim: usize, value: u64) {
    let at = tensor_info_at(file, name);
    let dims = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
    assert!(dim < dims, "tensor `{name}` has {dims} dimensions");
    let d = at + 4 + 8 * dim;
    file[d..d + 8].copy_from_slice(&value.to_le_bytes());
}

/// Sets the data offset of tensor `name` to `value`.
pub fn set_offset(file: &mut [u8], name: &str, value: u64) {
    let at = tensor_info_at(file, name);
    let dims = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
    let o = at + 4 + 8 * dims + 4;
    file[o..o + 8].copy_from_slice(&value.to_le_bytes());
}
