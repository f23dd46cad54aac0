//! The transcendental functions of the forward pass, the same to the last bit on every target.
//!
//! The standard library calls the platform's C library natively and another implementation in
//! wasm, and their last bits differ now and then; a last bit can flip a greedy choice. Here
//! each function is computed in f64 by the `libm` crate (one implementation everywhere) and
//! rounded once to f32, which gives the correctly rounded result but in vanishingly rare
//! cases — the results llama.cpp's C library (glibc) gives too, where a plain f32 `libm::expf`
//! is off by one bit often enough to change SmolLM2's greedy text.

pub(crate) fn exp(x: f32) -> f32 {
    libm::exp(f64::from(x)) as f32
}

pub(crate) fn ln(x: f32) -> f32 {
    libm::log(f64::from(x)) as f32
}

pub(crate) fn powf(x: f32, y: f32) -> f32 {
    libm::pow(f64::from(x), f64::from(y)) as f32
}

pub(crate) fn sin(x: f32) -> f32 {
    libm::sin(f64::from(x)) as f32
}

pub(crate) fn cos(x: f32) -> f32 {
    libm::cos(f64::from(x)) as f32
}

pub(crate) fn tanh(x: f32) -> f32 {
    libm::tanh(f64::from(x)) as f32
}

#[cfg(test)]
mod tests {
    /// How many of `n` inputs in [-20, 20) (scaled by `scale`) give other bits than `theirs`.
    fn differences(ours: fn(f32) -> f32, theirs: fn(f32) -> f32, scale: f32, n: usize) -> usize {
        (0..n).map(|i| (-20.0 + 40.0 * i as f32 / n as f32) * scale).filter(|&x| ours(x).to_bits() != theirs(x).to_bits()).count()
    }

    /// On x86_64 Linux the standard library's f32 functions are glibc's, which llama.cpp calls.
    /// `exp` (SiLU, softmax) agrees but for a few in ten thousand; glibc's `tanhf`, `sinf` and
    /// `cosf` are not correctly rounded, so a few percent of their results differ by one bit.
    #[test]
    fn stays_within_a_bit_of_the_c_library() {
        let n = 200_000;
        assert!(differences(super::exp, f32::exp, 1.0, n) * 1000 < n, "exp");
        assert!(differences(super::tanh, f32::tanh, 1.0, n) * 20 < n, "tanh");
        assert!(differences(super::sin, f32::sin, 50.0, n) * 20 < n, "sin");
        assert!(differences(super::cos, f32::cos, 50.0, n) * 20 < n, "cos");
        for i in 0..n {
            let x = -20.0 + 40.0 * i as f32 / n as f32;
            let (ours, theirs) = (super::exp(x), x.exp());
            assert!(ours.to_bits().abs_diff(theirs.to_bits()) <= 1, "exp({x}): {ours} vs {theirs}");
        }
    }
}
