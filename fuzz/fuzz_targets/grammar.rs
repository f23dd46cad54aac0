//! Any text given to the GBNF parser gives a grammar or an error, never a panic or a hang; a
//! grammar that parses runs over any token texts without panicking, and the walk of a
//! vocabulary allows exactly the tokens that testing each one allows.
//!
//! Input: the grammar text, then a 0xFF byte, then token texts separated by 0xFE bytes, fed in
//! order (each accepted when the grammar allows it).
#![no_main]

use candlewick::grammar::{GrammarState, Vocabulary};
use candlewick::Grammar;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, tokens) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(grammar) = Grammar::parse(text) else { return };
    let Ok(mut state) = GrammarState::new(&grammar) else { return };
    let pieces: Vec<&[u8]> = tokens.split(|&b| b == 0xFE).take(64).collect();
    let vocabulary = Vocabulary::new(pieces.len(), pieces.iter().enumerate().map(|(i, p)| (i as u32, *p)));
    let mut mask = Vec::new();
    for piece in &pieces {
        state.allowed_tokens(&vocabulary, &mut mask);
        for (id, other) in pieces.iter().enumerate() {
            let walked = mask.get(id / 64).is_some_and(|w| w >> (id % 64) & 1 == 1);
            assert_eq!(walked, state.allows(other), "token {id} {other:?}");
        }
        if !state.allows(piece) {
            break;
        }
        state.accept(piece).expect("an allowed token is accepted");
        let _ = state.can_end();
    }
});
