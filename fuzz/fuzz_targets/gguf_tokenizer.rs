//! Any bytes given to the GGUF reader and tokenizer builder give a model or an error, never a
//! panic; a model that loads tokenizes and decodes without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = candlewick::Model::read_without_weights(&mut std::io::Cursor::new(data)) {
        let tok = model.tokenizer();
        for (text, special) in [("Hello, world! 123 <|im_start|>", true), ("  é中😀\n\t", false)] {
            if let Ok(ids) = tok.encode(text, true, special) {
                let _ = tok.decode(&ids, true);
            }
        }
        if let Ok(template) = model.chat_template() {
            let _ = template.render(&[candlewick::chat::Message::user("hi")], true);
        }
    }
});
