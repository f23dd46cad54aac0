mod common;
use candlewick::Model;
use common::*;

#[test]
fn prefill_equals_incremental() {
    for which in [SMOLLM2, QWEN25_CODER, GEMMA3] {
        let m = Model::open(model(which)).unwrap();
        let ids = m.tokenizer().encode("Once upon a time, in a small village, there lived", true, false).unwrap();
        let w = m.weights().unwrap();
        let mut a = w.new_state(64).unwrap();
        let full = w.forward(&mut a, &ids).unwrap();
        for split in [1, ids.len() / 2, ids.len() - 1] {
            let mut b = w.new_state(64).unwrap();
            w.forward(&mut b, &ids[..split]).unwrap();
            let mut inc = vec![];
            for t in &ids[split..] { inc = w.forward(&mut b, &[*t]).unwrap(); }
            let diff = full.iter().zip(&inc).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            println!("{} split {split}/{}: max |Δlogit| {diff}", which.1, ids.len());
        }
    }
}
