//! Unit tests of the grammar parser, matcher and JSON Schema converter.

use super::*;
use serde_json::json;

/// Feeds `text` one character at a time (each as its own token) and says whether the grammar
/// allows it all and can end there.
fn complete(grammar: &Grammar, text: &str) -> bool {
    let mut state = GrammarState::new(grammar).unwrap();
    for c in text.chars() {
        let mut buf = [0; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        if !state.allows(bytes) {
            return false;
        }
        state.accept(bytes).unwrap();
    }
    state.can_end()
}

fn g(text: &str) -> Grammar {
    Grammar::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The error for `text`: (line, column, message).
fn error(text: &str) -> (usize, usize, String) {
    match Grammar::parse(text) {
        Err(Error::Grammar { line, column, message }) => (line, column, message),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("{text:?} parsed"),
    }
}

#[test]
fn sequences_alternatives_groups_and_repetitions() {
    let grammar = g("root ::= (\"ab\" | \"c\") [0-9]+ \"!\"? # a comment\n");
    for ok in ["ab1", "c42", "c0!", "ab123!"] {
        assert!(complete(&grammar, ok), "{ok}");
    }
    for bad in ["", "ab", "a1", "c!", "c1!!", "d1"] {
        assert!(!complete(&grammar, bad), "{bad}");
    }
    let bounded = g("root ::= \"x\"{2,3} \"y\"{2} \"z\"{1,}\n");
    assert!(complete(&bounded, "xxyyz") && complete(&bounded, "xxxyyzzz"));
    assert!(!complete(&bounded, "xyyz") && !complete(&bounded, "xxxxyyz") && !complete(&bounded, "xxyz") && !complete(&bounded, "xxyy"));
    let crlf = g("root ::= a b\r\na ::= \"x\"\r\nb ::= \"y\" # comment\r\n");
    assert!(complete(&crlf, "xy") && !complete(&crlf, "x"));
    let star = g("root ::= \"a\"* \"b\"{0,2}");
    assert!(complete(&star, "") && complete(&star, "aaab") && complete(&star, "bb") && !complete(&star, "bbb"));
}

#[test]
fn rules_reference_each_other_across_lines() {
    // As in llama.cpp, a rule continues on the next line only inside parentheses.
    let grammar = g("root ::= list\nlist ::= item (\",\" item)*\n\nitem ::= (\n  [a-z]+\n  | \"(\" list \")\"\n)\n");
    assert!(Grammar::parse("root ::= \"a\"\n  | \"b\"").is_err());
    assert!(complete(&grammar, "a,(b,cd),(e,(f))"));
    assert!(!complete(&grammar, "a,(b") && !complete(&grammar, "a,,b"));
}

#[test]
fn character_classes_escapes_and_any() {
    let grammar = g(r#"root ::= [^a-c\n] [\x41-\x43] [é\u00e8] "\t\"\\" . [-z] [a-]"#);
    assert!(complete(&grammar, "dBè\t\"\\😀-a"));
    assert!(complete(&grammar, "ZCé\t\"\\xza"));
    assert!(!complete(&grammar, "aBè\t\"\\x-a"), "negated range");
    assert!(!complete(&grammar, "dDè\t\"\\x-a"), "hex range");
    assert!(!complete(&grammar, "\nBè\t\"\\x-a"), "negated escape");
    let empty_alternative = g(r#"root ::= | "a""#);
    assert!(complete(&empty_alternative, "") && complete(&empty_alternative, "a"));
}

#[test]
fn syntax_errors_give_line_and_column() {
    let (line, column, message) = error("root ::= \"a\"\nitem \"b\"\n");
    assert_eq!((line, column), (2, 6), "{message}");
    assert!(message.contains("::="), "{message}");

    let (line, column, message) = error("root ::= \"a\" undefined-rule\n");
    assert_eq!((line, column), (1, 14));
    assert!(message.contains("undefined-rule"), "{message}");

    let (line, column, message) = error("root ::= \"a\"\nx ::= \"unterminated\n");
    assert_eq!((line, column), (2, 7));
    assert!(message.contains("unterminated"), "{message}");

    let (_, column, message) = error(r#"root ::= "a\q""#);
    assert_eq!(column, 12);
    assert!(message.contains("escape"), "{message}");

    assert!(error("other ::= \"a\"").2.contains("root"));
    assert!(error("root ::= *").2.contains('*'));
    assert!(error("root ::= \"a\"{3,1}").2.contains("maximum"));
    assert!(error("root ::= \"a\"{3000}").2.contains("2000"));
    assert!(error("root ::= \"a\"{40}{60}").2.contains("2000"), "repetitions of repetitions multiply");
    assert!(error("root ::= []").2.contains("empty"));
    assert!(error("root ::= <[12]>").2.contains("token"));
    assert!(error("root ::= \"a\" )").2.contains("end of the line"));
    assert!(error("root ::= (\"a\"").2.contains(')'));
    assert!(error("root ::= [a-").2.contains("unterminated") || error("root ::= [a-").2.contains("end"));
    assert!(error("root ::= \"\\x4\"").2.contains("hex"));
    assert!(error("root ::= \"a\"\nroot ::= \"b\"").2.contains("twice"));
    let (line, column, message) = error("root ::= \"ok\"\n\n  x ::= x \"a\" | \"b\"\n");
    assert_eq!((line, column), (3, 3), "{message}");
    assert!(message.contains("left-recursive"), "{message}");
    // Left recursion through a rule that can match nothing.
    assert!(error("root ::= opt root \"a\" | \"b\"\nopt ::= \"x\"?").2.contains("left-recursive"));
    assert!(error("root ::= (\"\")* \"a\"").2.contains("left-recursive"));
}

#[test]
fn end_of_generation_only_where_the_grammar_can_end() {
    let grammar = g(r#"root ::= "ab" "c"?"#);
    let mut state = GrammarState::new(&grammar).unwrap();
    assert!(!state.can_end());
    state.accept(b"ab").unwrap();
    assert!(state.can_end());
    assert!(state.allows(b"c") && !state.allows(b"d") && !state.allows(b"cc"));
    state.accept(b"c").unwrap();
    assert!(state.can_end() && !state.allows(b"c"));
    assert!(matches!(state.accept(b"c"), Err(Error::GrammarRejected { .. })));
}

#[test]
fn tokens_spanning_several_characters_and_rules() {
    let grammar = g(r#"root ::= "{" ws "\"a\"" ws ":" ws [0-9]+ ws "}"
ws ::= [ \n]*"#);
    let mut state = GrammarState::new(&grammar).unwrap();
    assert!(state.allows(b"{\n  \"a\""));
    assert!(!state.allows(b"{\"b\""));
    assert!(!state.allows(b""), "an empty token is never allowed");
    assert!(!state.allows(b"\0{"), "text after a NUL does not count");
    state.accept(b"{ \"a\": 1").unwrap();
    assert!(state.allows(b"23 }") && !state.allows(b"2a"));
}

#[test]
fn partial_utf8_characters_across_tokens() {
    let e_acute = "é".as_bytes(); // C3 A9
    let grammar = g(r#"root ::= "é" [a-z]"#);
    let mut state = GrammarState::new(&grammar).unwrap();
    assert!(state.allows(&e_acute[..1]), "the first byte of é can start it");
    assert!(!state.allows("è".as_bytes()), "è is another character");
    state.accept(&e_acute[..1]).unwrap();
    assert!(state.allows(&[e_acute[1], b'x']));
    assert!(!state.allows(&[0xA8]), "completes to è");
    assert!(!state.allows(b"x"), "not a continuation byte");
    state.accept(&[e_acute[1]]).unwrap();
    assert!(!state.can_end() && state.allows(b"q"));

    // A first byte whose characters all lie outside the class is refused at once.
    let ascii = g("root ::= [a-z]+");
    let mut state = GrammarState::new(&ascii).unwrap();
    assert!(!state.allows(&e_acute[..1]));
    assert!(!state.allows(&[0x80]), "a stray continuation byte is invalid");
    let anything = g("root ::= [^a]+");
    let mut state = GrammarState::new(&anything).unwrap();
    assert!(state.allows(&e_acute[..1]));
    // Four-byte characters split over three tokens.
    let emoji = "😀".as_bytes();
    let grammar = g("root ::= [\\U0001F600-\\U0001F64F]");
    let mut state = GrammarState::new(&grammar).unwrap();
    assert!(state.allows(&emoji[..1]) && !state.allows("a".as_bytes()));
    state.accept(&emoji[..2]).unwrap();
    assert!(state.allows(&emoji[2..3]));
    state.accept(&emoji[2..]).unwrap();
    assert!(state.can_end());
}

#[test]
fn grammars_clone_cheaply_and_compare_by_text() {
    let a = g("root ::= \"x\"");
    let b = a.clone();
    assert_eq!(a, b);
    assert_eq!(a, g("root ::= \"x\""));
    assert_ne!(a, g("root ::= \"y\""));
    assert_eq!(a.source(), "root ::= \"x\"");
}

/// Which integers in `range` an integer schema's grammar accepts.
fn accepted_integers(schema: serde_json::Value, range: std::ops::RangeInclusive<i64>) -> Vec<i64> {
    let grammar = Grammar::from_json_schema(&schema).unwrap();
    range.filter(|n| complete(&grammar, &n.to_string())).collect()
}

#[test]
fn integer_bounds_accept_exactly_the_range() {
    let cases = [
        (json!({"type": "integer", "minimum": 7, "maximum": 1234}), 7, 1234),
        (json!({"type": "integer", "minimum": -35, "maximum": 120}), -35, 120),
        (json!({"type": "integer", "minimum": -300, "maximum": -12}), -300, -12),
        (json!({"type": "integer", "exclusiveMinimum": 9.5, "exclusiveMaximum": 100}), 10, 99),
        (json!({"type": "integer", "minimum": 0, "maximum": 0}), 0, 0),
    ];
    for (schema, lo, hi) in cases {
        let want: Vec<i64> = (lo..=hi).collect();
        assert_eq!(accepted_integers(schema.clone(), -1500..=1500), want, "{schema}");
    }
    let open = accepted_integers(json!({"type": "integer", "minimum": 42}), -100..=1500);
    assert_eq!(open, (42..=1500).collect::<Vec<_>>());
    let open = accepted_integers(json!({"type": "integer", "maximum": -3}), -1500..=100);
    assert_eq!(open, (-1500..=-3).collect::<Vec<_>>());
}

#[test]
fn schema_grammars_accept_valid_documents_and_refuse_others() {
    let schema = json!({
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]+$"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
            "n": {"type": "number"},
            "extra": {"anyOf": [{"type": "null"}, {"type": "boolean"}]}
        },
        "required": ["id"]
    });
    let grammar = Grammar::from_json_schema(&schema).unwrap();
    for ok in [r#"{"id": "AB-12"}"#, "{\n  \"id\": \"XY-0\",\n  \"tags\": [\"a\", \"b\"],\n  \"n\": -1.5e3\n}", r#"{"id":"QQ-1","extra":null}"#, r#"{"id":"QQ-1","n":2,"extra":true}"#] {
        assert!(complete(&grammar, ok), "{ok}");
    }
    for bad in [r#"{"id": "ab-12"}"#, r#"{"tags": []}"#, r#"{"id": "AB-1", "tags": ["a", "b", "a"]}"#, r#"{"id": "AB-1", "extra": 1}"#, r#"{"id": "AB-1", "other": 1}"#, r#"{"n": 1, "id": "AB-1"}"#] {
        assert!(!complete(&grammar, bad), "{bad}");
    }
}

#[test]
fn recursive_refs_convert() {
    let schema = json!({
        "$ref": "#/$defs/node",
        "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"$ref": "#/$defs/node"}}, "required": ["v"]}}
    });
    let grammar = Grammar::from_json_schema(&schema).unwrap();
    assert!(complete(&grammar, r#"{"v": 1, "next": {"v": 2, "next": {"v": 3}}}"#));
    assert!(!complete(&grammar, r#"{"v": 1, "next": {}}"#));
}

/// The pointer and message of a schema's conversion error.
fn schema_error(schema: serde_json::Value) -> (String, String) {
    match json_schema_to_gbnf(&schema) {
        Err(Error::JsonSchema { pointer, message }) => (pointer, message),
        Err(other) => panic!("unexpected error {other}"),
        Ok(g) => panic!("{schema} converted:\n{g}"),
    }
}

#[test]
fn unsupported_and_invalid_schemas_name_the_place() {
    let cases = [
        (json!({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}), "#/properties/a/not", "not"),
        (json!({"type": "array", "items": {"type": "integer"}, "uniqueItems": true}), "#/uniqueItems", "uniqueItems"),
        (json!({"$ref": "https://example.com/schema.json"}), "#/$ref", "same document"),
        (json!({"$ref": "#/$defs/missing"}), "#/$ref", "points to nothing"),
        (json!({"type": "strange"}), "#/type", "strange"),
        (json!({"type": "number", "minimum": 0}), "#/minimum", "integers only"),
        (json!({"type": "string", "pattern": "^(?=a)a$"}), "#/pattern", "lookaround"),
        (json!({"type": "string", "pattern": "^\\d+$"}), "#/pattern", "\\d"),
        (json!({"type": "string", "pattern": "^(a$"}), "#/pattern", "unbalanced"),
        (json!({"type": "string", "pattern": "^a$b$"}), "#/pattern", "anchor"),
        (json!({"type": "array", "items": 3}), "#/items", "object"),
        (json!({"type": "array", "minItems": -1}), "#/minItems", "non-negative"),
        (json!({"enum": []}), "#/enum", "non-empty"),
        (json!({"anyOf": []}), "#/anyOf", "empty"),
        (json!({"type": "integer", "minimum": 5, "maximum": 1}), "#", "above"),
        (json!({"type": "object", "properties": {"a/b": {"if": {}}}}), "#/properties/a~1b/if", "if"),
        (json!(5), "#", "object"),
        // Found by fuzzing: a minimum above the maximum wrote `{5,4}`, which does not parse.
        (json!({"type": "array", "items": {"type": "number"}, "minItems": 5, "maxItems": 4}), "#/minItems", "above"),
        (json!({"type": "string", "minLength": 3, "maxLength": 2}), "#/minLength", "above"),
        // Found by fuzzing: a repeated group that can match nothing is left-recursive.
        (json!({"type": "string", "pattern": "^(?:`(?:a?)+c)?d$"}), "#", "left-recursive"),
    ];
    for (schema, pointer, words) in cases {
        let (got, message) = schema_error(schema.clone());
        assert_eq!(got, pointer, "{schema}: {message}");
        assert!(message.contains(words), "{schema}: {message}");
    }
    let mut deep = json!({"type": "integer"});
    for _ in 0..500 {
        deep = json!({"type": "array", "items": deep});
    }
    assert!(schema_error(deep).1.contains("deeper"));
    assert!(matches!(Grammar::from_json_schema_text("{"), Err(Error::JsonSchema { pointer, .. }) if pointer == "#"));
}

/// Token texts for the vocabulary tests: ASCII pieces, split and whole multi-byte characters,
/// invalid bytes and a NUL.
fn test_tokens() -> Vec<Vec<u8>> {
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let pieces = ["{", "}", "\"", ":", ",", " ", "\n", "  ", "a", "b", "ab", "abc", "1", "12", "-", "true", "null", "\"a", "\":", "\\", "é", "😀", " {", "x"];
    for p in pieces {
        tokens.push(p.as_bytes().to_vec());
    }
    for p in pieces.iter().take(12) {
        for q in pieces.iter().skip(4).take(12) {
            tokens.push(format!("{p}{q}").into_bytes());
        }
    }
    let multi = ["é", "😀", "ü"];
    for m in multi {
        let b = m.as_bytes();
        for cut in 1..b.len() {
            tokens.push(b[..cut].to_vec());
            tokens.push(b[cut..].to_vec());
            tokens.push([b"a", &b[..cut]].concat());
        }
    }
    tokens.extend([vec![0x80], vec![0xFF], vec![0xC3, b'a'], vec![b'a', 0, b'b'], vec![0], vec![]]);
    // Found by fuzzing: an overlong lead byte and a non-continuation byte inside one token
    // decode (unchecked, as in llama.cpp) to `z`; the walk must not prune them.
    tokens.extend([b"ab\xC1:".to_vec(), vec![0xC3, 0xA8], vec![0xC1, 0x3A]]);
    tokens
}

#[test]
fn vocabulary_walk_equals_testing_each_token() {
    let tokens = test_tokens();
    let vocabulary = Vocabulary::new(tokens.len() + 3, tokens.iter().enumerate().map(|(i, t)| (i as u32, t.as_slice())));
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]});
    let grammars = [
        Grammar::from_json_schema(&schema).unwrap(),
        g(r#"root ::= ("é" | "ü" [a-z] | "😀")+ "x""#),
        g(r#"root ::= [^a]* "a""#),
        g(r#"root ::= [a-z]+ [^é]"#),
    ];
    // Texts fed before comparing, token by token.
    let feeds: [&[&[u8]]; 4] = [
        &[b"{", b" ", b"\"a\"", b":", b" \"", b"ab", b"\"", b","],
        &["é".as_bytes(), &"ü".as_bytes()[..1], &"ü".as_bytes()[1..], b"q", &"😀".as_bytes()[..2]],
        &[b"b", &"é".as_bytes()[..1]],
        &[b"ab", b"q"],
    ];
    let mut mask = Vec::new();
    for (grammar, feed) in grammars.iter().zip(feeds) {
        let mut state = GrammarState::new(grammar).unwrap();
        for step in 0..=feed.len() {
            state.allowed_tokens(&vocabulary, &mut mask);
            for (id, token) in tokens.iter().enumerate() {
                let walked = mask[id / 64] >> (id % 64) & 1 == 1;
                assert_eq!(walked, state.allows(token), "step {step}, token {id} {:?}", String::from_utf8_lossy(token));
            }
            if let Some(text) = feed.get(step) {
                state.accept(text).unwrap();
            }
        }
    }
}

/// A state met again takes its allowed tokens from a remembered walk: the same tokens as a new
/// walk from there, for two vocabularies, and no walk is remembered twice.
#[test]
fn remembered_walks_equal_new_walks() {
    let tokens = test_tokens();
    let vocabulary = Vocabulary::new(tokens.len() + 3, tokens.iter().enumerate().map(|(i, t)| (i as u32, t.as_slice())));
    let other = Vocabulary::new(tokens.len() + 3, tokens.iter().enumerate().filter(|(i, _)| i % 2 == 0).map(|(i, t)| (i as u32, t.as_slice())));
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
    let grammar = Grammar::from_json_schema(&schema).unwrap();
    // The last four steps start inside the string, from the same stacks.
    let feed: [&[u8]; 9] = [b"{", b" ", b"\"a\"", b":", b" \"", b"ab", b"cd", b"ef", b"gh"];
    let (mut mask, mut fresh_mask) = (Vec::new(), Vec::new());
    let mut state = GrammarState::new(&grammar).unwrap();
    let mut inside = Vec::new();
    for (step, text) in feed.iter().enumerate() {
        for vocabulary in [&vocabulary, &other] {
            state.allowed_tokens(vocabulary, &mut mask);
            let mut fresh = state.clone();
            fresh.walks.clear();
            fresh.allowed_tokens(vocabulary, &mut fresh_mask);
            assert_eq!(mask, fresh_mask, "step {step}");
        }
        if step >= 5 {
            inside.push(state.stacks.clone());
        }
        state.accept(text).unwrap();
    }
    assert!(inside.windows(2).all(|w| w[0] == w[1]), "the steps inside the string start from other stacks");
    // Without remembering, the last eight walks would be those four steps', twice each.
    let distinct: std::collections::HashSet<_> = state.walks.iter().map(|w| (w.vocabulary, w.stacks.clone(), w.partial)).collect();
    assert_eq!(distinct.len(), state.walks.len(), "a walk remembered twice");
}

/// Found by the fuzzer (a 264-byte input took 25 s): a grammar that nests its rule once more
/// with each character keeps one stack per depth, and each step compared every new stack with
/// every kept one. Repeats are now found by hashing and the stacks' total size is bounded, so a
/// long text either goes through or meets a clear error, in time proportional to its stacks.
#[test]
fn a_rule_nested_with_every_character_stays_bounded() {
    let grammar = g("root ::= . root*");
    let mut state = GrammarState::new(&grammar).unwrap();
    let mut accepted = 0;
    for _ in 0..2000 {
        if !state.allows(b"[") {
            break;
        }
        match state.accept(b"[") {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert!(e.to_string().contains("too ambiguous"), "{e}");
                break;
            }
        }
        let unique: HashSet<&Vec<u32>> = state.stacks.iter().collect();
        assert_eq!(unique.len(), state.stacks.len(), "a stack kept twice after {accepted} characters");
        assert!(state.stacks.len() <= MAX_STACKS);
        assert!(state.stacks.iter().map(Vec::len).sum::<usize>() <= MAX_POSITIONS);
    }
    assert!(accepted >= 150, "only {accepted} characters of a grammar that allows any text");
    assert!(state.can_end() || accepted < 2000);
}
