//! The command-line tool (native only).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use candlewick::{chat, tools, Chunk, ChunkStream, GenerateOptions, Model, Prompt, Result, SamplingConfig, Session, ToolChoice};
use clap::{Parser, Subcommand};
use futures::StreamExt;

/// Run quantized GGUF language models on the CPU.
#[derive(Parser)]
#[command(name = "candlewick", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the model comes from.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// The GGUF file.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// A Hugging Face tokenizer.json to use instead of the file's own tokenizer.
    #[arg(long, value_name = "FILE")]
    tokenizer_json: Option<PathBuf>,
}

impl ModelArgs {
    /// The header and tokenizer only (any architecture).
    fn open_vocabulary(&self) -> Result<Model> {
        match &self.tokenizer_json {
            Some(json) => Model::open_with_tokenizer_json(&self.model, json, false),
            None => Model::open_without_weights(&self.model),
        }
    }

    /// The whole model, with a progress bar on stderr when it is a terminal.
    pub fn open_weights(&self) -> Result<Model> {
        if let Some(json) = &self.tokenizer_json {
            return Model::open_with_tokenizer_json(&self.model, json, true);
        }
        if !std::io::stderr().is_terminal() {
            return Model::open(&self.model);
        }
        let mut shown = u64::MAX;
        let model = Model::open_with_progress(&self.model, |done, total| {
            let percent = done * 100 / total.max(1);
            if percent != shown {
                shown = percent;
                let bar = "#".repeat(percent as usize / 4);
                eprint!("\rloading [{bar:<25}] {percent:>3}%");
            }
        });
        eprint!("\r{:<40}\r", "");
        model
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print the token ids of TEXT as one JSON array (no BOS/EOS added).
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// The text to tokenize.
        #[arg(long)]
        text: String,
        /// Parse special-token text such as `<|im_start|>` as the special token.
        #[arg(long)]
        special: bool,
    },
    /// Print the model's facts as one JSON object.
    Info {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Print the prompt the model's chat template renders for MESSAGES.
    Template {
        #[command(flatten)]
        model: ModelArgs,
        /// A JSON array of {"role": "system"|"user"|"assistant"|"tool", "content": "..."}.
        #[arg(long, value_name = "JSON")]
        messages: String,
        /// Leave out the header that opens the assistant's reply.
        #[arg(long)]
        no_generation_prompt: bool,
    },
    /// Stream the model's answer to a prompt.
    Generate(GenerateArgs),
    /// Perplexity over a text file, as llama.cpp's llama-perplexity computes it; with
    /// --kl-divergence-base / --kl-divergence, the KL divergence between two runs.
    Perplexity(crate::perplexity_cli::PerplexityArgs),
    /// Answer each line of stdin as a user message, in one conversation that keeps its KV cache.
    Chat(ChatArgs),
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt: one user message rendered with the chat template (or fed as is with --raw).
    #[arg(long, conflicts_with = "messages", required_unless_present = "messages")]
    prompt: Option<String>,
    /// A JSON array of chat messages, rendered with the chat template.
    #[arg(long, value_name = "JSON")]
    messages: Option<String>,
    /// Feed --prompt without a chat template (BOS per the file's add_bos_token).
    #[arg(long, requires = "prompt")]
    raw: bool,
    #[command(flatten)]
    options: OptionArgs,
}

#[derive(clap::Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    options: OptionArgs,
}

/// How to generate: what `generate` and `chat` share.
#[derive(clap::Args)]
struct OptionArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = SamplingConfig::default().temperature)]
    temperature: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = SamplingConfig::default().top_k)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = SamplingConfig::default().top_p)]
    top_p: f32,
    /// Drop tokens less likely than M times the most likely one.
    #[arg(long, default_value_t = SamplingConfig::default().min_p)]
    min_p: f32,
    /// Penalty for repeating one of the last 64 tokens (1: none).
    #[arg(long, default_value_t = SamplingConfig::default().repeat_penalty)]
    repeat_penalty: f32,
    /// Random seed.
    #[arg(long, default_value_t = SamplingConfig::default().seed)]
    seed: u64,
    /// Stop when the model writes STR (repeatable); STR is not printed.
    #[arg(long, value_name = "STR")]
    stop: Vec<String>,
    /// Positions the KV cache holds (default: the prompt plus --max-tokens).
    #[arg(long)]
    context_length: Option<usize>,
    /// Threads for the forward passes (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// A JSON file of tools the model may call: an array of OpenAI-shaped function definitions.
    #[arg(long, value_name = "FILE")]
    tools: Option<PathBuf>,
    /// auto (the model decides), none, required, or a function's name (the last two need
    /// grammar support, not yet available).
    #[arg(long, default_value = "auto", value_name = "CHOICE")]
    tool_choice: String,
    /// Print each chunk as one JSON line.
    #[arg(long)]
    json: bool,
}

impl OptionArgs {
    /// The options, checked.
    fn options(&self) -> Result<GenerateOptions> {
        let sampling = SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingConfig::default()
        };
        let tools = match &self.tools {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| candlewick::Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
                tools::parse_tools(&text)?
            }
            None => Vec::new(),
        };
        let options = GenerateOptions {
            max_tokens: self.max_tokens,
            sampling,
            stop: self.stop.clone(),
            context_length: self.context_length,
            threads: self.threads,
            tools,
            tool_choice: ToolChoice::parse(&self.tool_choice),
        };
        options.validate()?;
        Ok(options)
    }
}

fn json_line(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"type\":\"error\",\"message\":\"{e}\"}}"))
}

/// Streams a generation to stdout; returns whether it ended without error.
fn generate(args: GenerateArgs) -> Result<bool> {
    let prompt = match (&args.prompt, &args.messages) {
        (Some(p), _) if args.raw => Prompt::Raw(p.clone()),
        (Some(p), _) => Prompt::User(p.clone()),
        (None, Some(m)) => Prompt::Messages(chat::parse_messages(m)?),
        (None, None) => unreachable!("clap requires --prompt or --messages"),
    };
    let options = args.options.options()?;
    let model = args.model.open_weights()?;
    Ok(print_stream(model.generate(prompt, options), args.options.json))
}

/// Answers each line of stdin as a user message, in one session; returns whether every turn
/// ended without error.
fn chat(args: ChatArgs) -> Result<bool> {
    let options = args.options.options()?;
    let model = args.model.open_weights()?;
    let mut session = Session::new(&model)?;
    if let Some(system) = &args.system {
        session.set_messages(vec![chat::Message::system(system.as_str())])?;
    }
    let mut ok = true;
    for line in std::io::stdin().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        ok &= print_stream(session.generate(vec![chat::Message::user(line)], options.clone()), args.options.json);
    }
    Ok(ok)
}

/// Prints a stream's chunks (as text, or as JSON lines) and its usage on stderr; returns
/// whether it ended without error.
fn print_stream(mut stream: ChunkStream, json: bool) -> bool {
    let mut stdout = std::io::stdout().lock();
    let mut ok = true;
    futures::executor::block_on(async {
        while let Some(chunk) = stream.next().await {
            if json {
                let _ = writeln!(stdout, "{}", json_line(&chunk));
            }
            match chunk {
                Chunk::Text { text } if !json => {
                    let _ = write!(stdout, "{text}");
                }
                Chunk::ToolCall { id, name, arguments } if !json => {
                    let _ = write!(stdout, "\n[tool call {id}: {name}({arguments})]\n");
                }
                Chunk::Complete { finish_reason, stop, usage, .. } => {
                    if !json {
                        let _ = writeln!(stdout);
                    }
                    let stop = stop.map(|s| format!(" ({s:?})")).unwrap_or_default();
                    let cached = if usage.cached_tokens > 0 { format!(" ({} cached)", usage.cached_tokens) } else { String::new() };
                    eprintln!(
                        "[{} prompt tokens{cached}, {} generated, finished: {}{stop}; first token after {:.0} ms; prefill {:.1} tok/s, decode {:.1} tok/s]",
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        json_line(&finish_reason).trim_matches('"'),
                        usage.time_to_first_token_ms,
                        usage.prefill_tokens_per_second,
                        usage.decode_tokens_per_second
                    );
                }
                Chunk::Error { message } => {
                    ok = false;
                    if !json {
                        eprintln!("candlewick: {message}");
                    }
                }
                Chunk::Text { .. } | Chunk::ToolCall { .. } => {}
            }
            let _ = stdout.flush();
        }
    });
    ok
}

fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Tokenize { model, text, special } => {
            let ids = model.open_vocabulary()?.tokenizer().encode(&text, false, special)?;
            println!("{}", json_line(&ids));
        }
        Command::Info { model } => {
            let info = model.open_vocabulary()?.info()?;
            println!("{}", serde_json::to_string_pretty(&info).map_err(|e| candlewick::Error::Io(e.into()))?);
        }
        Command::Template { model, messages, no_generation_prompt } => {
            let messages = chat::parse_messages(&messages)?;
            let rendered = model.open_vocabulary()?.chat_template()?.render(&messages, !no_generation_prompt)?;
            print!("{rendered}");
        }
        Command::Generate(args) => return generate(args),
        Command::Perplexity(args) => crate::perplexity_cli::run(args)?,
        Command::Chat(args) => return chat(args),
    }
    Ok(true)
}

pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("candlewick: {e}");
            ExitCode::FAILURE
        }
    }
}
