//! Any bytes given to the JSON Schema converter give a grammar or an error, never a panic; a
//! schema that converts gives GBNF that parses, and its grammar runs over a few JSON texts.
#![no_main]

use candlewick::grammar::{json_schema_to_gbnf, GrammarState};
use candlewick::Grammar;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(schema) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(gbnf) = json_schema_to_gbnf(&schema) else { return };
    let grammar = Grammar::parse(&gbnf).unwrap_or_else(|e| panic!("the converter wrote a grammar that does not parse: {e}\n{gbnf}"));
    let Ok(start) = GrammarState::new(&grammar) else { return };
    for text in ["{\"a\": 1, \"b\": [true, null, \"x\"]}", "[1, 2.5e3, -7]", "\"2024-01-31\"", "12", "{}"] {
        let mut state = start.clone();
        for c in text.as_bytes().chunks(3) {
            if !state.allows(c) {
                break;
            }
            state.accept(c).expect("an allowed token is accepted");
        }
    }
});
