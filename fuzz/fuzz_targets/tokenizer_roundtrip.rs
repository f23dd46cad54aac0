//! Encoding arbitrary UTF-8 with each real model's tokenizer and decoding the ids gives the
//! text back, with or without special-token parsing, as llama.cpp guarantees for these
//! tokenizers (byte-level BPE, and SentencePiece with byte fallback and no added space prefix)
//! — for text whose every character round-trips alone: SmolLM2's vocabulary has no token for
//! some bytes (0x06, 0xF1, …), which llama.cpp and candlewick both leave out, so a character
//! with such a byte does not come back (that text is still encoded and decoded, for panics).
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
    let round_trips = |c: char| {
        let alone = c.encode_utf8(&mut [0; 4]).to_string();
        tokenizer.encode(&alone, false, false).and_then(|ids| tokenizer.decode(&ids, false)).is_ok_and(|d| d == alone)
    };
    if text.chars().all(round_trips) {
        assert_eq!(decoded, text, "round trip through {ids:?}");
    }
});
