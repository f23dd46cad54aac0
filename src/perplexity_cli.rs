//! `candlewick perplexity`: the library's [`candlewick::perplexity`] over a text file.

use std::path::PathBuf;

use candlewick::perplexity::{self, PerplexityOptions, Run};
use candlewick::Result;

/// Perplexity over a text file, as llama.cpp's `llama-perplexity` computes it.
#[derive(clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: crate::cli::ModelArgs,
    /// The text to score.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(long, short = 'c', default_value_t = 512)]
    context: usize,
    /// Save this run's top-k log-probabilities to FILE, to compare later runs with.
    #[arg(long, value_name = "FILE")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare this run with one saved by --kl-divergence-base.
    #[arg(long, value_name = "FILE", conflicts_with = "kl_divergence_base")]
    kl_divergence: Option<PathBuf>,
    /// Log-probabilities saved per position with --kl-divergence-base.
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    /// Threads to run on (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| with_path(e, &args.file))?;
    let base = match &args.kl_divergence {
        Some(path) => Some(Run::read(&mut std::fs::File::open(path).map_err(|e| with_path(e, path))?)?),
        None => None,
    };
    let model = args.model.open_weights()?;
    let tokens = perplexity::tokenize(&model, &text)?;
    let options = PerplexityOptions { context: args.context, top_k: args.top_k, threads: args.threads };
    let evaluation = perplexity::evaluate(&model, &tokens, &options, base.as_ref())?;
    let run = &evaluation.run;
    println!("{} chunks of {} tokens, {} positions scored", run.tokens.len() / run.context, run.context, run.positions.len());
    println!("Final estimate: PPL = {}", run.perplexity());
    if let Some(path) = &args.kl_divergence_base {
        run.write(&mut std::fs::File::create(path).map_err(|e| with_path(e, path))?)?;
        println!("saved the top-{} log-probabilities to {}", args.top_k, path.display());
    }
    if let (Some(d), Some(base)) = (&evaluation.divergence, &base) {
        println!("base PPL          {}", base.perplexity());
        println!("Mean    KLD:      {:.6} ± {:.6}", d.mean().value, d.mean().uncertainty);
        println!("99.0%   KLD:      {:.6}", d.quantile(0.99));
        println!("Maximum KLD:      {:.6}", d.quantile(1.0));
        println!("Same top token:   {:.3} ± {:.3} %", 100.0 * d.same_top().value, 100.0 * d.same_top().uncertainty);
    }
    Ok(())
}

fn with_path(e: std::io::Error, path: &std::path::Path) -> candlewick::Error {
    candlewick::Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}
