//! What a grammar costs per generated token, beside what the forward pass costs, on
//! Qwen2.5-Coder-0.5B (151,936 tokens in its vocabulary) at 1 thread.
//!
//! `cargo bench --bench grammar`. For each constraint it first generates greedily under the
//! grammar, then replays those tokens step by step, timing separately the forward pass of each
//! token (decode) and the grammar's share of choosing it: the candidates tested against the
//! grammar (greedy; llama.cpp's default chain, top-k 40 …; and the same without top-k, where
//! every token is judged), and advancing the grammar state over the chosen token. The issue's
//! budget: at most 10 % of decode time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candlewick::chat::Message;
use candlewick::grammar::GrammarState;
use candlewick::sampling::Sampler;
use candlewick::{GenerateOptions, Grammar, Model, Prompt, SamplingConfig};

const TOKENS: usize = 64;

fn model_path() -> PathBuf {
    let cache = std::env::var_os("CANDLEWICK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/candlewick"));
    cache.join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

fn constraints() -> Vec<(&'static str, &'static str, Grammar)> {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.[a-z]{2,3}$"},
            "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 4}
        },
        "required": ["name", "age", "email", "hobbies"]
    });
    vec![
        ("JSON Schema (object)", "Describe a person as JSON: name, age, email and hobbies.", Grammar::from_json_schema(&schema).expect("schema")),
        ("GBNF list", "List five kinds of trees.", Grammar::parse("root ::= (\"- \" [A-Za-z ]+ \"\\n\"){5}").expect("grammar")),
        (
            "GBNF any JSON",
            "Write a JSON object describing a car.",
            Grammar::parse(
                "root ::= object\nvalue ::= object | array | string | number | (\"true\" | \"false\" | \"null\") ws\nobject ::= \"{\" ws ( string \":\" ws value (\",\" ws string \":\" ws value)* )? \"}\" ws\narray ::= \"[\" ws ( value (\",\" ws value)* )? \"]\" ws\nstring ::= \"\\\"\" ( [^\"\\\\] | \"\\\\\" [\"\\\\/bfnrt] )* \"\\\"\" ws\nnumber ::= \"-\"? [0-9]+ (\".\" [0-9]+)? ws\nws ::= [ \\t\\n]*\n",
            )
            .expect("grammar"),
        ),
    ]
}

fn ms(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1000.0 / n.max(1) as f64
}

fn main() {
    let path = model_path();
    if !path.is_file() {
        eprintln!("{} is missing: run `scripts/fetch-models.sh qwen25coder`", path.display());
        std::process::exit(1);
    }
    let model = Model::open(&path).expect("model");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    println!("Qwen2.5-Coder-0.5B Q4_K_M, {} tokens in the vocabulary, 1 thread, {TOKENS} tokens per constraint", model.tokenizer().vocab_size());
    println!("grammar columns: choosing the token under the grammar plus advancing the grammar, per token (argmax without a grammar for scale)");
    println!("{:<22} {:>11} {:>13} {:>16} {:>14} {:>13} {:>10} {:>14} {:>12}", "constraint", "decode ms", "argmax ms", "greedy+grammar", "top-k 40+gr.", "top-k 0+gr.", "greedy %", "top-k 40 %", "top-k 0 %");
    for (label, request, grammar) in constraints() {
        let prompt = model.chat_tokens(&[Message::user(request)]).expect("prompt");
        let options = GenerateOptions { max_tokens: TOKENS, sampling: SamplingConfig::greedy(), grammar: Some(grammar.clone()), threads: Some(1), ..GenerateOptions::default() };
        let mut generator = model.generator(Prompt::Tokens(prompt.clone()), options).expect("generator");
        while generator.next_chunk().is_some() {}
        let tokens = generator.generated_tokens().to_vec();

        let (decode, greedy, sampled, plain, full, steps) = pool.install(|| {
            let weights = model.weights().expect("weights");
            let tokenizer = model.tokenizer();
            let vocabulary = model.grammar_vocabulary();
            let mut state = weights.new_state(prompt.len() + tokens.len() + 1).expect("state");
            let mut logits = weights.forward(&mut state, &prompt).expect("forward");
            let mut grammar = GrammarState::new(&grammar).expect("grammar state");
            let mut greedy_sampler = Sampler::new(SamplingConfig::greedy()).expect("sampler");
            let mut default_sampler = Sampler::new(SamplingConfig::default()).expect("sampler");
            let mut full_sampler = Sampler::new(SamplingConfig { top_k: 0, ..SamplingConfig::default() }).expect("sampler");
            let mut full = Duration::ZERO;
            let (mut decode, mut greedy, mut sampled, mut plain, mut steps) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO, 0);
            for &token in &tokens {
                if tokenizer.is_end_of_generation(token) {
                    break;
                }
                let t0 = Instant::now();
                let mut filter = grammar.filter(tokenizer, vocabulary);
                let chosen = greedy_sampler.sample_allowed(&logits, &[], |id| filter.allows(id));
                let t1 = Instant::now();
                let mut filter = grammar.filter(tokenizer, vocabulary);
                default_sampler.sample_allowed(&logits, &[], |id| filter.allows(id));
                let t2 = Instant::now();
                let mut filter = grammar.filter(tokenizer, vocabulary);
                full_sampler.sample_allowed(&logits, &[], |id| filter.allows(id));
                let t3 = Instant::now();
                greedy_sampler.sample(&logits, &[]);
                let t4 = Instant::now();
                assert_eq!(chosen, Some(token), "the replay chose another token");
                grammar.accept(tokenizer.token_bytes(token, true).unwrap_or_default()).expect("accept");
                let t5 = Instant::now();
                logits = weights.forward(&mut state, &[token]).expect("forward");
                decode += t5.elapsed();
                let accept = t5 - t4;
                greedy += (t1 - t0) + accept;
                sampled += (t2 - t1) + accept;
                full += (t3 - t2) + accept;
                plain += t4 - t3;
                steps += 1;
            }
            (decode, greedy, sampled, plain, full, steps)
        });
        let (d, g, s, p, f) = (ms(decode, steps), ms(greedy, steps), ms(sampled, steps), ms(plain, steps), ms(full, steps));
        println!("{label:<22} {d:>11.2} {p:>13.3} {g:>16.3} {s:>14.3} {f:>13.3} {:>9.2}% {:>13.2}% {:>11.2}%", 100.0 * g / d, 100.0 * s / d, 100.0 * f / d);
    }
}
