//! The agent's reward after the k training steps of a decision (TYING.md).
//!
//! `--paper-compat`: [`paper_reward`] on one random training batch in eval
//! mode (the agent clips it to [-10, 10] in the TD target). Default:
//! [`relative_ppl_reward`] on a fixed evaluation batch, with `--param-cost`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The paper's reward: minus the batch perplexity.
pub fn paper_reward(cross_entropy: f64) -> Result<f64> {
    if !cross_entropy.is_finite() {
        bail!("reward: cross-entropy is {cross_entropy}; the training loss diverged");
    }
    Ok(-cross_entropy.exp())
}

/// The default reward: `(ppl_before - ppl_after) / ppl_before
/// - param_cost * max(0, unique_trainable_blocks - free_blocks) / n_layer`
/// (`free_blocks` is `--param-budget`; 0 charges every block, the paper).
pub fn relative_ppl_reward(
    ppl_before: f64,
    ppl_after: f64,
    param_cost: f64,
    unique_trainable_blocks: usize,
    free_blocks: usize,
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
    let charged = unique_trainable_blocks.saturating_sub(free_blocks);
    Ok(improvement - param_cost * charged as f64 / n_layer as f64)
}

/// A moving baseline subtracted from each reward (`--reward-baseline N`):
/// the mean of the rewards so far for the first N, then an exponential
/// average with weight 1/N. Training makes early intervals improve the
/// perplexity far more than late ones; without a baseline the agent credits
/// that drift to whatever states it happened to visit early.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardBaseline {
    mean: f64,
    count: u64,
}

impl RewardBaseline {
    /// `reward` minus the baseline of the rewards before it (0 for the very
    /// first one), then moves the baseline towards `reward`.
    pub fn advantage(&mut self, reward: f64, window: u64) -> f64 {
        let advantage = if self.count == 0 {
            0.0
        } else {
            reward - self.mean
        };
        self.count += 1;
        let weight = 1.0 / self.count.min(window.max(1)) as f64;
        self.mean += weight * (reward - self.mean);
        advantage
    }
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
        assert!((relative_ppl_reward(100.0, 90.0, 0.0, 6, 0, 6).unwrap() - 0.1).abs() < 1e-12);
        // 50 -> 55 is 10% worse; cost 0.2 * 3 / 12 = 0.05.
        let r = relative_ppl_reward(50.0, 55.0, 0.2, 3, 0, 12).unwrap();
        assert!((r - (-0.1 - 0.05)).abs() < 1e-12);
        // Fewer trainable blocks, higher reward at equal perplexity.
        let few = relative_ppl_reward(30.0, 29.0, 0.1, 2, 0, 8).unwrap();
        let many = relative_ppl_reward(30.0, 29.0, 0.1, 8, 0, 8).unwrap();
        assert!((few - many - 0.1 * 6.0 / 8.0).abs() < 1e-12);
        // A budget of 3 free blocks: 5 blocks pay for 2, 3 or fewer for none.
        let r = relative_ppl_reward(50.0, 55.0, 0.2, 5, 3, 12).unwrap();
        assert!((r - (-0.1 - 0.2 * 2.0 / 12.0)).abs() < 1e-12);
        for u in 1..=3 {
            let r = relative_ppl_reward(50.0, 55.0, 0.2, u, 3, 12).unwrap();
            assert!((r + 0.1).abs() < 1e-12);
        }
    }

    #[test]
    fn baseline_is_a_running_mean_then_an_exponential_one() {
        let mut b = RewardBaseline::default();
        assert_eq!(b.advantage(0.5, 2), 0.0);
        // Mean of [0.5] is 0.5.
        assert!((b.advantage(0.1, 2) - (0.1 - 0.5)).abs() < 1e-12);
        // Mean of [0.5, 0.1] is 0.3; from now on each reward weighs 1/2.
        assert!((b.advantage(0.2, 2) - (0.2 - 0.3)).abs() < 1e-12);
        assert!((b.advantage(0.0, 2) - (0.0 - 0.25)).abs() < 1e-12);
        // A constant reward ends with advantage 0.
        let mut c = RewardBaseline::default();
        let last = (0..200).map(|_| c.advantage(0.7, 10)).last().unwrap();
        assert!(last.abs() < 1e-12);
    }

    #[test]
    fn relative_reward_rejects_bad_input() {
        assert!(relative_ppl_reward(0.0, 1.0, 0.0, 1, 0, 2).is_err());
        assert!(relative_ppl_reward(10.0, f64::INFINITY, 0.0, 1, 0, 2).is_err());
        assert!(relative_ppl_reward(10.0, 9.0, -1.0, 1, 0, 2).is_err());
        assert!(relative_ppl_reward(10.0, 9.0, 0.0, 3, 0, 2).is_err());
    }
}
