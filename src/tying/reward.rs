//! The agent's reward after the k training steps of a decision (TYING.md).
//!
//! `--paper-compat`: [`paper_reward`] on one random training batch in eval
//! mode (the agent clips it to [-10, 10] in the TD target). Default:
//! [`relative_ppl_reward`] on a fixed evaluation batch, with `--param-cost`.

use anyhow::{bail, Result};

/// The paper's reward: minus the batch perplexity.
pub fn paper_reward(cross_entropy: f64) -> Result<f64> {
    if !cross_entropy.is_finite() {
        bail!("reward: cross-entropy is {cross_entropy}; the training loss diverged");
    }
    Ok(-cross_entropy.exp())
}

/// The default reward: `(ppl_before - ppl_after) / ppl_before
/// - param_cost * unique_trainable_blocks / n_layer`.
pub fn relative_ppl_reward(
    ppl_before: f64,
    ppl_after: f64,
    param_cost: f64,
    unique_trainable_blocks: usize,
    n_layer: usize,
) -> Result<f64> {
    if !(ppl_before.is_finite() && ppl_before > 0.0 && ppl_after.is_finite() && ppl_after > 0.0) {
        bail!(
            "reward: perplexities must be finite and positive (before {ppl_before}, after {ppl_after}); the training loss diverged"
        );
    }
    if n_layer == 0 || unique_trainable_blocks > n_layer {
        bail!("reward: {unique_trainable_blocks} trainable blocks out of {n_layer} is impossible");
    }
    if !param_cost.is_finite() || param_cost < 0.0 {
        bail!("--param-cost must be a finite number >= 0, got {param_cost}");
    }
    let improvement = (ppl_before - ppl_after) / ppl_before;
    Ok(improvement - param_cost * unique_trainable_blocks as f64 / n_layer as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_reward_is_minus_perplexity() {
        assert!((paper_reward(0.0).unwrap() + 1.0).abs() < 1e-12);
        // ln(20) nats -> perplexity 20.
        assert!((paper_reward(20f64.ln()).unwrap() + 20.0).abs() < 1e-9);
        assert!((paper_reward(1.5).unwrap() + 4.481_689_070_338_065).abs() < 1e-12);
        assert!(paper_reward(f64::NAN).is_err());
    }

    #[test]
    fn relative_reward_on_hand_computed_values() {
        // 100 -> 90: 10% better, no cost.
        assert!((relative_ppl_reward(100.0, 90.0, 0.0, 6, 6).unwrap() - 0.1).abs() < 1e-12);
        // 50 -> 55 is 10% worse; cost 0.2 * 3 / 12 = 0.05.
        let r = relative_ppl_reward(50.0, 55.0, 0.2, 3, 12).unwrap();
        assert!((r - (-0.1 - 0.05)).abs() < 1e-12);
        // Fewer trainable blocks, higher reward at equal perplexity.
        let few = relative_ppl_reward(30.0, 29.0, 0.1, 2, 8).unwrap();
        let many = relative_ppl_reward(30.0, 29.0, 0.1, 8, 8).unwrap();
        assert!((few - many - 0.1 * 6.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn relative_reward_rejects_bad_input() {
        assert!(relative_ppl_reward(0.0, 1.0, 0.0, 1, 2).is_err());
        assert!(relative_ppl_reward(10.0, f64::INFINITY, 0.0, 1, 2).is_err());
        assert!(relative_ppl_reward(10.0, 9.0, -1.0, 1, 2).is_err());
        assert!(relative_ppl_reward(10.0, 9.0, 0.0, 3, 2).is_err());
    }
}
