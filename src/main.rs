//! `candlewick`: the command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use candlewick::{chat, Model, Result};
use clap::{Parser, Subcommand};

/// Run quantized GGUF language models on the CPU.
#[derive(Parser)]
#[command(name = "candlewick", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the model comes from.
#[derive(clap::Args)]
struct ModelArgs {
    /// The GGUF file.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// A Hugging Face tokenizer.json to use instead of the file's own tokenizer.
    #[arg(long, value_name = "FILE")]
    tokenizer_json: Option<PathBuf>,
}

impl ModelArgs {
    fn open(&self) -> Result<Model> {
        match &self.tokenizer_json {
            Some(json) => Model::open_with_tokenizer_json(&self.model, json),
            None => Model::open(&self.model),
        }
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
        /// A JSON array of {"role": "system"|"user"|"assistant", "content": "..."}.
        #[arg(long, value_name = "JSON")]
        messages: String,
        /// Leave out the header that opens the assistant's reply.
        #[arg(long)]
        no_generation_prompt: bool,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tokenize { model, text, special } => {
            let ids = model.open()?.tokenizer().encode(&text, false, special)?;
            println!("{}", serde_json::to_string(&ids).map_err(|e| candlewick::Error::Io(e.into()))?);
        }
        Command::Info { model } => {
            let info = model.open()?.info()?;
            println!("{}", serde_json::to_string_pretty(&info).map_err(|e| candlewick::Error::Io(e.into()))?);
        }
        Command::Template { model, messages, no_generation_prompt } => {
            let messages = chat::parse_messages(&messages)?;
            let rendered = model.open()?.chat_template()?.render(&messages, !no_generation_prompt)?;
            print!("{rendered}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("candlewick: {e}");
            ExitCode::FAILURE
        }
    }
}
