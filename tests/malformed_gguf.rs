//! Malformed GGUF bytes and malformed tokenizer metadata give an `Error` naming the cause —
//! never a panic, a hang, or an allocation sized by an untrusted number.

mod common;

use std::io::Cursor;

use candlewick::gguf::Gguf;
use candlewick::{Error, Model};
use common::gguf_writer::{s, tiny_gpt2, tiny_spm, Meta};

fn read(bytes: &[u8]) -> candlewick::Result<Model> {
    Model::read_without_weights(&mut Cursor::new(bytes))
}

fn err(bytes: &[u8]) -> Error {
    match read(bytes) {
        Ok(_) => panic!("{} bytes were accepted", bytes.len()),
        Err(e) => e,
    }
}

fn header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

#[test]
fn the_fixtures_are_valid() {
    let gpt2 = read(&tiny_gpt2().bytes()).unwrap();
    assert_eq!(gpt2.tokenizer().encode("abc a", false, false).unwrap(), vec![7, 8]);
    let spm = read(&tiny_spm().bytes()).unwrap();
    assert_eq!(spm.tokenizer().encode("ab", true, false).unwrap(), vec![1, 263]);
}

#[test]
fn empty_file() {
    assert!(matches!(err(b""), Error::Truncated { .. }));
}

#[test]
fn bad_magic() {
    let mut b = tiny_gpt2().bytes();
    b[..4].copy_from_slice(b"GGML");
    assert!(matches!(err(&b), Error::BadMagic { found } if &found == b"GGML"));
}

#[test]
fn unsupported_versions() {
    for version in [0, 1, 4, 0xFFFF_FFFF] {
        let mut f = tiny_gpt2();
        f.version = version;
        assert!(matches!(err(&f.bytes()), Error::UnsupportedVersion { version: v } if v == version));
    }
}

#[test]
fn truncated_inside_every_section() {
    let bytes = tiny_gpt2().bytes();
    // Cut at every length: magic, version, counts, keys, values, arrays, tensor infos, data.
    for len in 0..bytes.len() {
        match read(&bytes[..len]) {
            Err(Error::Truncated { .. }) => {}
            other => panic!("cut at {len} of {}: {other:?}", bytes.len()),
        }
    }
    assert!(read(&bytes).is_ok());
}

#[test]
fn absurd_tensor_count() {
    let e = err(&header(3, 1_000_000_000_000, 0));
    assert!(matches!(&e, Error::Truncated { what } if what.contains("1000000000000 tensors")), "{e}");
}

#[test]
fn absurd_metadata_count() {
    let e = err(&header(3, 0, u64::MAX));
    assert!(matches!(&e, Error::Truncated { what } if what.contains("18446744073709551615 metadata entries")), "{e}");
}

#[test]
fn huge_string_length() {
    let mut b = header(3, 0, 1);
    b.extend((1u64 << 60).to_le_bytes()); // key length 2^60
    b.extend(b"general.architecture");
    let e = err(&b);
    assert!(matches!(&e, Error::Truncated { what } if what.contains("1152921504606846976 bytes")), "{e}");
}

#[test]
fn huge_array_count() {
    let mut count = Vec::new();
    count.extend(8u32.to_le_bytes()); // element type string
    count.extend((1u64 << 62).to_le_bytes());
    let f = tiny_gpt2().meta("tokenizer.ggml.tokens", Meta::Raw(9, count));
    let e = err(&f.bytes());
    assert!(matches!(&e, Error::Truncated { what } if what.contains("tokenizer.ggml.tokens")), "{e}");
}

#[test]
fn unknown_value_type() {
    let f = tiny_gpt2().meta("general.weird", Meta::Raw(99, vec![0; 8]));
    let e = err(&f.bytes());
    assert!(matches!(&e, Error::Corrupt { reason } if reason.contains("general.weird") && reason.contains("99")), "{e}");
}

#[test]
fn bool_that_is_not_a_bool() {
    let f = tiny_gpt2().meta("tokenizer.ggml.add_bos_token", Meta::Raw(7, vec![7]));
    assert!(matches!(err(&f.bytes()), Error::Corrupt { .. }));
}

#[test]
fn duplicate_key() {
    let mut f = tiny_gpt2();
    f.metadata.push(("general.architecture".into(), s("qwen2")));
    let e = err(&f.bytes());
    assert!(e.to_string().contains("general.architecture"), "{e}");
}

#[test]
fn too_many_dimensions() {
    let f = tiny_gpt2().tensor("x", &[1, 1, 1, 1, 1], 0, vec![0; 4]);
    assert!(matches!(err(&f.bytes()), Error::Corrupt { .. }));
}

#[test]
fn tensor_data_past_the_end() {
    let mut b = tiny_gpt2().bytes();
    b.truncate(b.len() - 32);
    let e = err(&b);
    assert!(matches!(&e, Error::Truncated { what } if what.contains("token_embd.weight")), "{e}");
}

#[test]
fn tensor_dimensions_that_overflow() {
    let f = tiny_gpt2().tensor("x", &[u64::MAX, 2], 0, vec![0; 4]);
    assert!(matches!(err(&f.bytes()), Error::Corrupt { .. }));
}

#[test]
fn tokens_of_the_wrong_type() {
    let f = tiny_gpt2().meta("tokenizer.ggml.tokens", Meta::F32s(vec![1.0, 2.0]));
    let e = err(&f.bytes());
    assert!(matches!(&e, Error::MetadataType { key, .. } if key == "tokenizer.ggml.tokens"), "{e}");
    let f = tiny_gpt2().meta("tokenizer.ggml.model", Meta::U32(2));
    let e = err(&f.bytes());
    assert!(matches!(&e, Error::MetadataType { key, expected: "string", found: "uint32" } if key == "tokenizer.ggml.model"), "{e}");
}

#[test]
fn token_types_of_the_wrong_count_or_value() {
    let f = tiny_gpt2().meta("tokenizer.ggml.token_type", Meta::I32s(vec![1, 1]));
    assert!(matches!(err(&f.bytes()), Error::InvalidMetadata { key, .. } if key == "tokenizer.ggml.token_type"));
    let f = tiny_gpt2().meta("tokenizer.ggml.token_type", Meta::I32s(vec![9; 11]));
    assert!(matches!(err(&f.bytes()), Error::InvalidMetadata { key, .. } if key == "tokenizer.ggml.token_type"));
}

#[test]
fn token_ids_out_of_range() {
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        let f = tiny_gpt2().meta(key, Meta::U32(11));
        let e = err(&f.bytes());
        assert!(matches!(&e, Error::TokenOutOfRange { id: 11, vocab_size: 11, what } if what.contains(key)), "{e}");
    }
    let model = read(&tiny_gpt2().bytes()).unwrap();
    assert!(matches!(model.tokenizer().decode(&[3, 11], false), Err(Error::TokenOutOfRange { id: 11, .. })));
}

#[test]
fn missing_and_unknown_pre_tokenizer() {
    let e = err(&tiny_gpt2().without("tokenizer.ggml.pre").bytes());
    assert!(matches!(&e, Error::UnknownPreTokenizer { pre, .. } if pre == "<missing>"), "{e}");
    let e = err(&tiny_gpt2().meta("tokenizer.ggml.pre", s("my-new-model")).bytes());
    assert!(matches!(&e, Error::UnknownPreTokenizer { pre, .. } if pre == "my-new-model"), "{e}");
    assert!(e.to_string().contains("my-new-model") && e.to_string().contains("llama-bpe"), "{e}");
}

#[test]
fn unknown_tokenizer_model() {
    let e = err(&tiny_gpt2().meta("tokenizer.ggml.model", s("t5")).bytes());
    assert!(matches!(&e, Error::UnsupportedTokenizer { model, .. } if model == "t5"), "{e}");
}

#[test]
fn missing_tokenizer_keys() {
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"] {
        let e = err(&tiny_gpt2().without(key).bytes());
        assert!(matches!(&e, Error::MissingMetadata { key: k } if k == key), "{e}");
    }
    let e = err(&tiny_spm().without("tokenizer.ggml.scores").bytes());
    assert!(matches!(&e, Error::MissingMetadata { key } if key == "tokenizer.ggml.scores"), "{e}");
}

#[test]
fn malformed_merges() {
    let e = err(&tiny_gpt2().meta("tokenizer.ggml.merges", Meta::Strs(vec!["ab".into()])).bytes());
    assert!(matches!(&e, Error::InvalidMetadata { key, .. } if key == "tokenizer.ggml.merges"), "{e}");
    let e = err(&tiny_gpt2().meta("tokenizer.ggml.merges", Meta::Strs(vec!["zz yy".into()])).bytes());
    assert!(matches!(&e, Error::InvalidMetadata { key, reason } if key == "tokenizer.ggml.merges" && reason.contains("\"zz\" is not in the vocabulary")), "{e}");
}

#[test]
fn bad_alignment() {
    let e = err(&tiny_gpt2().meta("general.alignment", Meta::U32(3)).bytes());
    assert!(matches!(&e, Error::InvalidMetadata { key, .. } if key == "general.alignment"), "{e}");
}

#[test]
fn header_reader_reports_typed_keys() {
    let g = Gguf::read(&mut Cursor::new(tiny_gpt2().bytes())).unwrap();
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.u64("llama.context_length").unwrap(), 128);
    assert!(matches!(g.u64("llama.block_count"), Err(Error::MissingMetadata { key }) if key == "llama.block_count"));
    assert!(matches!(g.str("llama.context_length"), Err(Error::MetadataType { .. })));
    assert_eq!(g.tensors.len(), 1);
    assert_eq!(g.tensors[0].dims, vec![8, 11]);
}

/// Random byte flips in a valid file never panic: each read succeeds or returns an error.
#[test]
fn corrupted_bytes_never_panic() {
    let clean = tiny_spm().bytes();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut b = clean.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % b.len() as u64) as usize;
            b[at] = next() as u8;
        }
        if let Ok(model) = read(&b) {
            let tok = model.tokenizer();
            let ids = tok.encode("ab ba <s>", true, true).unwrap();
            tok.decode(&ids, true).unwrap();
        }
    }
}
