//! Perplexity and KL divergence over a text, computed as llama.cpp's `llama-perplexity`
//! computes them, so that builds, quantizations and engines can be compared on one scale.
//!
//! The text is tokenized with BOS when the model adds one and cut into chunks of `context`
//! tokens (at least two chunks; the rest of the text is left out). Each chunk is evaluated
//! from an empty cache with its first token replaced by BOS (when the model adds one), and
//! only the second half is scored: the logits at positions `context/2 .. context-1` predict
//! the tokens after them, so every scored token has at least half a context before it.
//!
//! A [`Run`] keeps, for every scored position, the log-probability of the token that came
//! and the `top_k` most likely tokens with theirs. Saved ([`Run::write`]) and given back to a
//! later evaluation as its base, it yields a [`Divergence`]: the KL divergence from the base's
//! distribution to this one, per position, with the base's probability mass outside its top
//! `k` counted as one outcome (so each value is a lower bound of the full divergence, exact
//! when the top `k` hold all the mass), and how often the most likely token is the same.

use std::io::{Read, Write};

use crate::error::{Error, Result};
use crate::Model;

/// How to evaluate a text.
#[derive(Debug, Clone)]
pub struct PerplexityOptions {
    /// Tokens per chunk (llama.cpp's `-c`). Default 512.
    pub context: usize,
    /// Log-probabilities kept per scored position. Default 32.
    pub top_k: usize,
    /// Threads for the forward passes (default: one per core).
    pub threads: Option<usize>,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        PerplexityOptions { context: 512, top_k: 32, threads: None }
    }
}

/// One scored position.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// The token that came next in the text.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f64,
    /// The most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f64)>,
}

/// The scored positions of a text, chunk after chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Tokens per chunk.
    pub context: usize,
    /// The tokens evaluated (whole chunks, as the text tokenized, before BOS replaced the
    /// first token of each chunk).
    pub tokens: Vec<u32>,
    /// Every scored position in order: `context - 1 - context/2` per chunk.
    pub positions: Vec<Position>,
}

/// A figure with its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The value.
    pub value: f64,
    /// Its standard error (one sigma).
    pub uncertainty: f64,
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} ± {:.5}", self.value, self.uncertainty)
    }
}

/// How a run's distributions differ from a base run's over the same tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// KL(base ‖ this run) per scored position, in nats.
    pub kld: Vec<f64>,
    /// Positions where both runs rank the same token first.
    pub same_top: usize,
}

impl Divergence {
    /// Mean KL divergence with its standard error.
    pub fn mean(&self) -> Estimate {
        mean_and_error(&self.kld)
    }

    /// The `p`-th quantile (0 ≤ p ≤ 1) of the per-position KL divergence, interpolated
    /// linearly between ranks (llama.cpp's `99.0%` line is `quantile(0.99)`).
    pub fn quantile(&self, p: f64) -> f64 {
        let mut sorted = self.kld.clone();
        sorted.sort_by(f64::total_cmp);
        let Some(last) = sorted.len().checked_sub(1) else { return f64::NAN };
        let at = p.clamp(0.0, 1.0) * last as f64;
        let (below, above) = (at.floor() as usize, at.ceil() as usize);
        sorted[below] + (sorted[above] - sorted[below]) * (at - below as f64)
    }

    /// The share of positions (0–1) where both runs rank the same token first, with its
    /// standard error.
    pub fn same_top(&self) -> Estimate {
        let n = self.kld.len() as f64;
        let p = self.same_top as f64 / n;
        Estimate { value: p, uncertainty: (p * (1.0 - p) / (n - 1.0).max(1.0)).sqrt() }
    }
}

/// The result of evaluating a text: the run, and its divergence from a base run if one was
/// given.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The scored positions.
    pub run: Run,
    /// How far this run is from the base run.
    pub divergence: Option<Divergence>,
}

/// Tokenizes `text` as llama.cpp's perplexity tool does: BOS first when the model adds one,
/// special-token text left as text.
///
/// # Errors
/// As [`crate::tokenizer::Tokenizer::encode`].
pub fn tokenize(model: &Model, text: &str) -> Result<Vec<u32>> {
    model.tokenizer().encode(text, true, false)
}

/// Scores `tokens` (from [`tokenize`]) chunk by chunk; with a `base`, also measures the
/// divergence from it.
///
/// # Errors
/// [`Error::InvalidParameter`] for a context under 4 tokens or beyond the model's, a `top_k`
/// of 0 or beyond the vocabulary, or fewer than two chunks of tokens;
/// [`Error::BaseRunMismatch`] when `base` scored other tokens or another context; any error
/// of the forward pass.
pub fn evaluate(model: &Model, tokens: &[u32], options: &PerplexityOptions, base: Option<&Run>) -> Result<Evaluation> {
    let weights = model.weights()?;
    let n_ctx = options.context;
    let model_context = weights.config().context_length;
    if n_ctx < 4 || n_ctx > model_context {
        return Err(Error::InvalidParameter { name: "context", reason: format!("{n_ctx} is not in 4..={model_context} (the model's context length)") });
    }
    let vocab = model.tokenizer().vocab_size();
    if options.top_k == 0 || options.top_k > vocab {
        return Err(Error::InvalidParameter { name: "top_k", reason: format!("{} is not in 1..={vocab}", options.top_k) });
    }
    let chunks = tokens.len() / n_ctx;
    if chunks < 2 {
        return Err(Error::InvalidParameter {
            name: "text",
            reason: format!("it has {} tokens; a context of {n_ctx} needs at least {} (two chunks)", tokens.len(), 2 * n_ctx),
        });
    }
    let tokens = &tokens[..chunks * n_ctx];
    let first = n_ctx / 2;
    if let Some(base) = base {
        let expected = chunks * (n_ctx - 1 - first);
        if base.positions.len() != expected {
            return Err(Error::BaseRunMismatch { reason: format!("it has {} scored positions, this run {expected}", base.positions.len()) });
        }
        if base.positions.iter().any(|p| p.top.is_empty()) {
            return Err(Error::BaseRunMismatch { reason: "some of its positions have no log-probabilities".into() });
        }
        if base.context != n_ctx || base.tokens != tokens {
            return Err(Error::BaseRunMismatch {
                reason: format!(
                    "it scored {} tokens with a context of {}, this run {} tokens with a context of {n_ctx}",
                    base.tokens.len(),
                    base.context,
                    tokens.len()
                ),
            });
        }
    }

    let bos = model.tokenizer().adds_bos().then(|| model.tokenizer().bos()).flatten();
    let mut positions = Vec::with_capacity(chunks * (n_ctx - 1 - first));
    let mut divergence = base.map(|_| Divergence { kld: Vec::new(), same_top: 0 });
    for chunk in tokens.chunks_exact(n_ctx) {
        let mut input = chunk.to_vec();
        if let Some(bos) = bos {
            input[0] = bos;
        }
        let mut state = weights.new_state(n_ctx)?;
        // The first half in one pass (no logits kept), then the scored half in batches small
        // enough that their logits (rows × vocabulary) stay modest.
        crate::platform::with_threads(options.threads, || weights.forward(&mut state, &input[..first]))?;
        for start in (first..n_ctx - 1).step_by(SCORED_BATCH) {
            let end = (start + SCORED_BATCH).min(n_ctx - 1);
            let logits = crate::platform::with_threads(options.threads, || weights.forward_rows(&mut state, &input[start..end], 0))?;
            for (row, logits) in logits.chunks_exact(vocab).enumerate() {
                let logprobs = log_softmax(logits);
                let next = chunk[start + row + 1];
                let position = Position { token: next, logprob: logprobs[next as usize], top: top_k(&logprobs, options.top_k) };
                if let (Some(d), Some(base)) = (divergence.as_mut(), base) {
                    let reference = &base.positions[positions.len()];
                    d.kld.push(kl_divergence(&reference.top, &logprobs));
                    d.same_top += usize::from(reference.top.first().map(|t| t.0) == position.top.first().map(|t| t.0));
                }
                positions.push(position);
            }
        }
    }
    Ok(Evaluation { run: Run { context: n_ctx, tokens: tokens.to_vec(), positions }, divergence })
}

/// Scored positions run through the model at once.
const SCORED_BATCH: usize = 64;

/// Natural-log probabilities of `logits`, in f64 (as llama.cpp's perplexity tool computes them).
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_sum = max + sum.ln();
    logits.iter().map(|&l| l as f64 - log_sum).collect()
}

/// The `k` largest log-probabilities with their tokens, largest first (lower id first on ties).
fn top_k(logprobs: &[f64], k: usize) -> Vec<(u32, f64)> {
    let mut ids: Vec<u32> = (0..logprobs.len() as u32).collect();
    let order = |a: &u32, b: &u32| logprobs[*b as usize].total_cmp(&logprobs[*a as usize]).then(a.cmp(b));
    if k < ids.len() {
        ids.select_nth_unstable_by(k, order);
        ids.truncate(k);
    }
    ids.sort_unstable_by(order);
    ids.into_iter().map(|id| (id, logprobs[id as usize])).collect()
}

/// KL(P ‖ Q) for P known by its top tokens `p_top` (log-probabilities), Q by all its
/// log-probabilities; P's mass outside its top tokens and Q's mass outside the same tokens
/// count as one more outcome.
fn kl_divergence(p_top: &[(u32, f64)], q: &[f64]) -> f64 {
    let mut kld = 0.0;
    let (mut p_in, mut q_in) = (0.0, 0.0);
    for &(id, lp) in p_top {
        let lq = q.get(id as usize).copied().unwrap_or(f64::NEG_INFINITY);
        kld += lp.exp() * (lp - lq);
        p_in += lp.exp();
        q_in += lq.exp();
    }
    let (p_rest, q_rest) = ((1.0 - p_in).max(0.0), (1.0 - q_in).max(f64::MIN_POSITIVE));
    if p_rest > 1e-12 {
        kld += p_rest * (p_rest.ln() - q_rest.ln());
    }
    kld.max(0.0)
}

fn mean_and_error(values: &[f64]) -> Estimate {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    Estimate { value: mean, uncertainty: (variance / (n - 1.0).max(1.0)).sqrt() }
}

impl Run {
    /// The perplexity, exp of the mean negative log-likelihood of the scored tokens, with its
    /// standard error (llama.cpp's "Final estimate: PPL = … +/- …").
    pub fn perplexity(&self) -> Estimate {
        let nll: Vec<f64> = self.positions.iter().map(|p| -p.logprob).collect();
        let Estimate { value, uncertainty } = mean_and_error(&nll);
        let ppl = value.exp();
        Estimate { value: ppl, uncertainty: uncertainty * ppl }
    }

    /// Writes the run (`--kl-divergence-base`): little-endian, [`RUN_MAGIC`], the context,
    /// `k`, the tokens, then per position the next token, its log-probability and the top `k`.
    ///
    /// # Errors
    /// [`Error::Io`] when writing fails.
    pub fn write(&self, out: &mut impl Write) -> Result<()> {
        let k = self.positions.first().map_or(0, |p| p.top.len());
        let mut buf = Vec::with_capacity(32 + 4 * self.tokens.len() + self.positions.len() * (12 + 12 * k));
        buf.extend_from_slice(RUN_MAGIC);
        for n in [self.context, k, self.tokens.len(), self.positions.len()] {
            buf.extend_from_slice(&(n as u64).to_le_bytes());
        }
        self.tokens.iter().for_each(|t| buf.extend_from_slice(&t.to_le_bytes()));
        for p in &self.positions {
            buf.extend_from_slice(&p.token.to_le_bytes());
            buf.extend_from_slice(&p.logprob.to_le_bytes());
            for i in 0..k {
                let (id, lp) = p.top.get(i).copied().unwrap_or((u32::MAX, f64::NEG_INFINITY));
                buf.extend_from_slice(&id.to_le_bytes());
                buf.extend_from_slice(&lp.to_le_bytes());
            }
        }
        out.write_all(&buf)?;
        Ok(())
    }

    /// Reads a run written by [`Run::write`].
    ///
    /// # Errors
    /// [`Error::BaseRunMismatch`] for data that is not such a run, or is cut short.
    pub fn read(input: &mut impl Read) -> Result<Run> {
        let mut data = Vec::new();
        input.read_to_end(&mut data)?;
        let bad = |what: &str| Error::BaseRunMismatch { reason: format!("it is not a saved candlewick run ({what})") };
        let mut rest = data.strip_prefix(RUN_MAGIC.as_slice()).ok_or_else(|| bad("no header"))?;
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                return Err(bad("it is cut short"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let mut counts = [0usize; 4];
        for c in &mut counts {
            let n = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad("a count"))?);
            *c = usize::try_from(n).map_err(|_| bad("a count too large"))?;
        }
        let [context, k, n_tokens, n_positions] = counts;
        let need = n_tokens.checked_mul(4).zip(n_positions.checked_mul(k.checked_mul(12).and_then(|b| b.checked_add(12)).unwrap_or(usize::MAX)));
        match need.and_then(|(a, b)| a.checked_add(b)) {
            Some(bytes) if bytes == data.len() - RUN_MAGIC.len() - 32 => {}
            _ => return Err(bad("its length does not match its counts")),
        }
        let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let f64_at = |b: &[u8]| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let tokens = take(4 * n_tokens)?.chunks_exact(4).map(u32_at).collect();
        let mut positions = Vec::with_capacity(n_positions);
        for _ in 0..n_positions {
            let head = take(12)?;
            let top = take(12 * k)?.chunks_exact(12).map(|e| (u32_at(e), f64_at(&e[4..]))).filter(|&(id, _)| id != u32::MAX).collect();
            positions.push(Position { token: u32_at(head), logprob: f64_at(&head[4..]), top });
        }
        Ok(Run { context, tokens, positions })
    }
}

/// The first bytes of a saved run.
pub const RUN_MAGIC: &[u8; 8] = b"cwppl\0\0\x01";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_divergence_is_zero_for_the_same_distribution_and_exact_when_the_top_holds_all() {
        let q = log_softmax(&[1.0, 2.0, 3.0, 0.5]);
        assert!(kl_divergence(&top_k(&q, 4), &q).abs() < 1e-12);
        assert!(kl_divergence(&top_k(&q, 2), &q).abs() < 1e-12);
        let p = log_softmax(&[3.0, 2.0, 1.0, 0.5]);
        let exact: f64 = p.iter().zip(&q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum();
        assert!((kl_divergence(&top_k(&p, 4), &q) - exact).abs() < 1e-12);
        // With the tail lumped together the value can only be lower.
        assert!(kl_divergence(&top_k(&p, 2), &q) <= exact + 1e-12);
    }

    #[test]
    fn quantiles_interpolate_between_ranks() {
        let d = Divergence { kld: vec![4.0, 1.0, 3.0, 2.0, 0.0], same_top: 4 };
        assert_eq!((d.quantile(0.0), d.quantile(0.5), d.quantile(1.0), d.quantile(0.875)), (0.0, 2.0, 4.0, 3.5));
        assert_eq!(d.same_top().value, 0.8);
    }

    #[test]
    fn a_run_reads_back_as_written_and_cut_or_foreign_data_is_refused() {
        let run = Run {
            context: 8,
            tokens: (0..16).collect(),
            positions: (0..6).map(|i| Position { token: i, logprob: -(i as f64), top: vec![(i, -0.5), (i + 1, -1.5)] }).collect(),
        };
        let mut bytes = Vec::new();
        run.write(&mut bytes).unwrap();
        assert_eq!(Run::read(&mut &bytes[..]).unwrap(), run);
        for cut in [0, 7, 8, 40, bytes.len() - 1] {
            assert!(matches!(Run::read(&mut &bytes[..cut]), Err(Error::BaseRunMismatch { .. })), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[8 + 8..8 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Run::read(&mut &huge[..]), Err(Error::BaseRunMismatch { .. })));
    }
}
