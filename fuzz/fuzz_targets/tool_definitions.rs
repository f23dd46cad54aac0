//! Any text given as tool definitions or chat messages gives tools or an error, never a panic;
//! tools that parse render through a template that reads them, and the messages beside them.
#![no_main]

use candlewick::chat::{parse_messages, ChatTemplate, Message};
use candlewick::tools::{parse_tools, ToolChoice};
use libfuzzer_sys::fuzz_target;

/// A template that reads everything tools and tool messages carry, as Qwen2.5's does.
const TEMPLATE: &str = "{% if tools %}{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% endif %}\
{% for m in messages %}<{{ m.role }}>{{ m.content }}{% for c in m.tool_calls or [] %}\
<call id={{ c.id }}>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>{% endfor %}\
{% if m.tool_call_id %}[{{ m.tool_call_id }}]{% endif %}{% endfor %}";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let template = ChatTemplate::new(TEMPLATE, String::new(), String::new()).expect("the template compiles");
    let messages = parse_messages(text).unwrap_or_else(|_| vec![Message::user(text)]);
    if let Ok(tools) = parse_tools(text) {
        let _ = ToolChoice::parse(text).validate(&tools);
        let _ = template.render_with_tools(&messages, &tools, true);
    }
    let _ = template.render(&messages, true);
});
