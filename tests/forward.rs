//! The forward pass gives the same logits whether a sequence is run in one batch or token by
//! token (each position's arithmetic does not depend on the batch), on all three real models.

mod common;

use candlewick::Model;
use common::{model, GEMMA3, QWEN25_CODER, SMOLLM2};

#[test]
fn batched_and_incremental_forward_passes_agree_exactly() {
    for which in [SMOLLM2, QWEN25_CODER, GEMMA3] {
        let model = Model::open(model(which)).unwrap();
        let ids = model.tokenizer().encode("Once upon a time, in a small village, there lived", true, false).unwrap();
        let weights = model.weights().unwrap();
        let mut whole = weights.new_state(64).unwrap();
        let batched = weights.forward(&mut whole, &ids).unwrap();
        assert_eq!(batched.len(), weights.vocab_size());
        for split in [1, ids.len() / 2, ids.len() - 1] {
            let mut state = weights.new_state(64).unwrap();
            weights.forward(&mut state, &ids[..split]).unwrap();
            let mut incremental = Vec::new();
            for &token in &ids[split..] {
                incremental = weights.forward(&mut state, &[token]).unwrap();
            }
            assert_eq!(batched, incremental, "{}: prefill {split} then one token at a time", which.1);
            // Truncating the cache to a prefix and running the rest again gives the same logits.
            state.truncate(split);
            assert_eq!(weights.forward(&mut state, &ids[split..]).unwrap(), batched);
        }
    }
}
