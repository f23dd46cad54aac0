//! Any generated text, in any format and cut into any pieces, parses without a panic; the
//! calls found are the same however the text is cut, each with a JSON object for arguments;
//! and text without calls comes back whole.
#![no_main]

use candlewick::tools::{Parsed, Tool, ToolCallParser, ToolFormat};
use libfuzzer_sys::fuzz_target;

const FORMATS: [ToolFormat; 5] = [ToolFormat::Hermes, ToolFormat::Qwen3Coder, ToolFormat::KimiK2, ToolFormat::Llama3Json, ToolFormat::Generic];

fn run(format: ToolFormat, text: &str, cuts: &[usize]) -> Vec<Parsed> {
    let tools = vec![Tool::new("search", "", serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}}}))];
    let mut parser = ToolCallParser::new(format, tools);
    let mut out: Vec<Parsed> = Vec::new();
    let mut from = 0;
    let mut add = |parsed: Vec<Parsed>, out: &mut Vec<Parsed>| {
        for p in parsed {
            match (out.last_mut(), p) {
                (Some(Parsed::Text(last)), Parsed::Text(t)) => last.push_str(&t),
                (_, p) => out.push(p),
            }
        }
    };
    for &cut in cuts.iter().chain([text.len()].iter()) {
        if cut >= from && text.is_char_boundary(cut) {
            add(parser.push(&text[from..cut]), &mut out);
            from = cut;
        }
    }
    add(parser.finish(), &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let format = FORMATS[first as usize % FORMATS.len()];
    let cuts: Vec<usize> = (0..text.len()).step_by(1 + (first as usize >> 3)).collect();
    let whole = run(format, text, &[]);
    assert_eq!(run(format, text, &cuts), whole, "the cut changes what is found");
    let mut calls = 0;
    for p in &whole {
        if let Parsed::Call { arguments, .. } = p {
            calls += 1;
            let value: serde_json::Value = serde_json::from_str(arguments).expect("arguments are JSON");
            assert!(value.is_object());
        }
    }
    if calls == 0 {
        let back: String = whole.iter().map(|p| if let Parsed::Text(t) = p { t.as_str() } else { "" }).collect();
        assert_eq!(back, text, "text without calls comes back whole");
    }
});
