//! Encoding arbitrary UTF-8 with each real model's tokenizer and decoding the ids gives the
//! text back, with or without special-token parsing, as llama.cpp guarantees for these
//! tokenizers (byte-level BPE, and SentencePiece with byte fallback and no added space prefix)
//! — except for a character the vocabulary cannot spell at all (SmolLM2 has no token for some
//! control bytes), which llama.cpp and candlewick both leave out.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let models = candlewick_fuzz::models();
    let tokenizer = models[usize::from(which) % models.len()].tokenizer();
    let parse_special = which & 0x80 != 0;
    let ids = tokenizer.encode(text, false, parse_special).expect("encoding UTF-8 text never fails");
    let decoded = tokenizer.decode(&ids, parse_special).expect("encoded ids are in the vocabulary");
    let spellable = |c: char| !tokenizer.encode(c.encode_utf8(&mut [0; 4]), false, false).unwrap_or_default().is_empty();
    let expected: String = text.chars().filter(|&c| spellable(c)).collect();
    assert_eq!(decoded, expected, "round trip through {ids:?}");
});
