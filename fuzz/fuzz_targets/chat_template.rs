//! Any list of messages rendered with each real model's chat template gives text or an error
//! (a template may refuse an order of roles), never a panic or a hang; rendered text tokenizes.
#![no_main]

use candlewick::chat::{Message, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, bool, Vec<(u8, String)>)| {
    let (which, add_generation_prompt, messages) = input;
    let models = candlewick_fuzz::models();
    let model = &models[usize::from(which) % models.len()];
    let Ok(template) = model.chat_template() else { return };
    let roles = [Role::System, Role::User, Role::Assistant];
    let messages: Vec<Message> =
        messages.into_iter().map(|(role, content)| Message::new(roles[usize::from(role) % roles.len()], content)).collect();
    if let Ok(rendered) = template.render(&messages, add_generation_prompt) {
        let _ = candlewick::chat::tokenize_rendered(model.tokenizer(), &rendered);
    }
});
