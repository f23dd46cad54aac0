//! What a grammar costs per generated token, beside what the forward pass costs, on
//! Qwen2.5-Coder-0.5B (151,936 tokens in its vocabulary) at 1 thread.
//!
//! `cargo bench --bench grammar`. For each constraint it first generates greedily under the
//! grammar, then replays those tokens step by step, timing separately the forward pass of each
//! token (decode) and the grammar's share of choosing it: what choosing under the grammar
//! (greedy; llama.cpp's default chain, top-k 40 …; and the same without top-k, where every token
//! is judged) and advancing the grammar state over the chosen token take beyond choosing with
//! the same chain and no grammar. The budget: at most 10 % of decode time.

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
    println!("per token: choosing it with no grammar → under the grammar plus advancing it, ms; the grammar's share (the difference) in % of decode");
    println!("{:<22} {:>9} {:>17} {:>17} {:>17} {:>9} {:>11} {:>10}", "constraint", "decode", "greedy", "top-k 40", "top-k 0", "greedy %", "top-k 40 %", "top-k 0 %");
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
            // One grammar state per sampler, as each would be in a generation of its own (a
            // state remembers its last walks of the vocabulary).
            let mut grammar = GrammarState::new(&grammar).expect("grammar state");
            let (mut grammar_default, mut grammar_full) = (grammar.clone(), grammar.clone());
            let mut greedy_sampler = Sampler::new(SamplingConfig::greedy()).expect("sampler");
            let mut default_sampler = Sampler::new(SamplingConfig::default()).expect("sampler");
            let mut full_sampler = Sampler::new(SamplingConfig { top_k: 0, ..SamplingConfig::default() }).expect("sampler");
            let (mut default_plain, mut full_plain) = (Sampler::new(SamplingConfig::default()).expect("sampler"), Sampler::new(SamplingConfig { top_k: 0, ..SamplingConfig::default() }).expect("sampler"));
            let mut full = Duration::ZERO;
            // plain[i]: greedy, top-k 40, top-k 0 with no grammar.
            let (mut decode, mut greedy, mut sampled, mut plain, mut steps) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, [Duration::ZERO; 3], 0);
            for &token in &tokens {
                if tokenizer.is_end_of_generation(token) {
                    break;
                }
                let t0 = Instant::now();
                let mut filter = grammar.filter(tokenizer, vocabulary);
                let chosen = greedy_sampler.sample_allowed(&logits, &[], |id| filter.allows(id));
                let t1 = Instant::now();
                let mut filter = grammar_default.filter(tokenizer, vocabulary);
                default_sampler.sample_allowed(&logits, &[], |id| filter.allows(id));
                let t2 = Instant::now();
                let mut filter = grammar_full.filter(tokenizer, vocabulary);
                full_sampler.sample_allowed(&logits, &[], |id| filter.allows(id));
                let t3 = Instant::now();
                let plain_start = Instant::now();
                greedy_sampler.sample(&logits, &[]);
                let p1 = Instant::now();
                default_plain.sample(&logits, &[]);
                let p2 = Instant::now();
                full_plain.sample(&logits, &[]);
                let t4 = Instant::now();
                plain[0] += p1 - plain_start;
                plain[1] += p2 - p1;
                plain[2] += t4 - p2;
                assert_eq!(chosen, Some(token), "the replay chose another token");
                let bytes = tokenizer.token_bytes(token, true).unwrap_or_default();
                grammar.accept(bytes).expect("accept");
                let t5 = Instant::now();
                grammar_default.accept(bytes).expect("accept");
                let t6 = Instant::now();
                grammar_full.accept(bytes).expect("accept");
                let t7 = Instant::now();
                logits = weights.forward(&mut state, &[token]).expect("forward");
                decode += t7.elapsed();
                greedy += (t1 - t0) + (t5 - t4);
                sampled += (t2 - t1) + (t6 - t5);
                full += (t3 - t2) + (t7 - t6);
                steps += 1;
            }
            (decode, greedy, sampled, plain, full, steps)
        });
        let d = ms(decode, steps);
        let with = [ms(greedy, steps), ms(sampled, steps), ms(full, steps)];
        let without = plain.map(|p| ms(p, steps));
        let cell = |i: usize| format!("{:.3} → {:.3}", without[i], with[i]);
        let share = |i: usize| 100.0 * (with[i] - without[i]) / d;
        println!("{label:<22} {d:>9.2} {:>17} {:>17} {:>17} {:>8.2}% {:>10.2}% {:>9.2}%", cell(0), cell(1), cell(2), share(0), share(1), share(2));
    }
}
