//! A seeded synthetic corpus with structure to learn and a known floor.
//!
//! Symbols `0 .. vocab-1` follow a sparse first-order Markov chain: each
//! symbol has `branching` successors with random probabilities (successor
//! `s+1 mod n` is always one, so the chain is irreducible). Symbol
//! `vocab-1` is a copy marker: before each chain step, with probability
//! `copy_prob`, the generator emits the marker and then repeats the
//! `copy_len` tokens that preceded it (a copy/induction pattern that only
//! attention over the context can predict). A copy ends on the same symbol
//! the chain was in, so the chain resumes from there.
//!
//! Entropy floor (per token, nats, given the whole past): with `q =
//! copy_prob`, `K = copy_len`, `pi` the chain's stationary distribution and
//! `H_c = sum_s pi(s) H(P(.|s))`, each step costs `H_b(q) + (1-q) H_c` nats
//! and yields `1 + qK` tokens on average, so the floor is
//! `(H_b(q) + (1-q) H_c) / (1 + qK)`; [`Synthetic::entropy_floor`] computes
//! it. A unigram model pays about `ln(vocab)` instead.

use crate::rng::HostRng;
use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyntheticConfig {
    pub seed: u64,
    /// Total symbols including the copy marker.
    pub vocab: usize,
    pub branching: usize,
    pub copy_prob: f64,
    pub copy_len: usize,
    pub train_tokens: usize,
    pub valid_tokens: usize,
    pub test_tokens: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 1234,
            vocab: 512,
            branching: 4,
            copy_prob: 0.05,
            copy_len: 8,
            train_tokens: 1_000_000,
            valid_tokens: 100_000,
            test_tokens: 100_000,
        }
    }
}

/// The generating model, built from a config.
#[derive(Clone, Debug)]
pub struct Synthetic {
    cfg: SyntheticConfig,
    /// For each chain symbol: (successor, probability) pairs.
    next: Vec<Vec<(u32, f64)>>,
}

impl Synthetic {
    pub fn new(cfg: SyntheticConfig) -> Result<Self> {
        if cfg.vocab < 3 || cfg.vocab > 1 << 16 {
            bail!("synthetic vocab must be in 3..=65536, got {}", cfg.vocab);
        }
        let n = cfg.vocab - 1;
        if cfg.branching == 0 || cfg.branching > n {
            bail!(
                "synthetic branching must be in 1..={n}, got {}",
                cfg.branching
            );
        }
        if !(0.0..1.0).contains(&cfg.copy_prob) || cfg.copy_len == 0 {
            bail!("synthetic copy_prob must be in [0, 1) and copy_len >= 1");
        }
        let mut rng = HostRng::derive(cfg.seed, 0);
        let next = (0..n)
            .map(|s| {
                let mut succ = vec![((s + 1) % n) as u32];
                while succ.len() < cfg.branching {
                    let c = rng.below(n as u64) as u32;
                    if !succ.contains(&c) {
                        succ.push(c);
                    }
                }
                let w: Vec<f64> = succ.iter().map(|_| rng.uniform() + 0.1).collect();
                let total: f64 = w.iter().sum();
                succ.into_iter()
                    .zip(w)
                    .map(|(c, w)| (c, w / total))
                    .collect()
            })
            .collect();
        Ok(Synthetic { cfg, next })
    }

    pub fn config(&self) -> &SyntheticConfig {
        &self.cfg
    }
    fn marker(&self) -> u32 {
        (self.cfg.vocab - 1) as u32
    }

    /// Generate a stream; `stream` picks an independent sequence (0 train,
    /// 1 valid, 2 test).
    pub fn generate(&self, len: usize, stream: u64) -> Vec<u32> {
        let mut rng = HostRng::derive(self.cfg.seed, stream + 1);
        let n = self.next.len() as u64;
        let k = self.cfg.copy_len;
        let mut out = Vec::with_capacity(len + k + 1);
        let mut s = rng.below(n) as u32;
        out.push(s);
        while out.len() < len {
            if out.len() >= k && rng.uniform() < self.cfg.copy_prob {
                let from = out.len() - k;
                out.push(self.marker());
                out.extend_from_within(from..from + k);
            } else {
                let u = rng.uniform();
                let succ = &self.next[s as usize];
                let mut acc = 0.0;
                // Fall back to the last successor against rounding.
                s = succ.last().unwrap().0;
                for &(c, p) in succ {
                    acc += p;
                    if u < acc {
                        s = c;
                        break;
                    }
                }
                out.push(s);
            }
        }
        out.truncate(len);
        out
    }

    /// Stationary distribution of the chain (power iteration on the lazy
    /// chain, which has the same fixed point and always converges).
    fn stationary(&self) -> Vec<f64> {
        let n = self.next.len();
        let mut pi = vec![1.0 / n as f64; n];
        for _ in 0..10_000 {
            let mut nxt: Vec<f64> = pi.iter().map(|p| 0.5 * p).collect();
            for (s, succ) in self.next.iter().enumerate() {
                for &(c, p) in succ {
                    nxt[c as usize] += 0.5 * pi[s] * p;
                }
            }
            let diff: f64 = nxt.iter().zip(&pi).map(|(a, b)| (a - b).abs()).sum();
            pi = nxt;
            if diff < 1e-13 {
                break;
            }
        }
        pi
    }

    /// The entropy rate in nats per token (see the module doc).
    pub fn entropy_floor(&self) -> f64 {
        let pi = self.stationary();
        let h_chain: f64 = self
            .next
            .iter()
            .zip(&pi)
            .map(|(succ, w)| w * succ.iter().map(|&(_, p)| -p * p.ln()).sum::<f64>())
            .sum();
        let q = self.cfg.copy_prob;
        let hb = if q > 0.0 {
            -q * q.ln() - (1.0 - q) * (1.0 - q).ln()
        } else {
            0.0
        };
        (hb + (1.0 - q) * h_chain) / (1.0 + q * self.cfg.copy_len as f64)
    }

    /// Mean negative log-likelihood (nats) of `tokens[1..]` under the true
    /// generating model, each token given all before it.
    pub fn nll(&self, tokens: &[u32]) -> f64 {
        let k = self.cfg.copy_len;
        let q = self.cfg.copy_prob;
        let mut s = tokens[0];
        let mut copying = 0;
        let mut total = 0.0;
        for (i, &t) in tokens.iter().enumerate().skip(1) {
            if copying > 0 {
                copying -= 1; // copied tokens are certain
                continue;
            }
            let q_here = if i >= k { q } else { 0.0 };
            let p = if t == self.marker() {
                copying = k;
                q_here
            } else {
                let pc = self.next[s as usize]
                    .iter()
                    .find(|e| e.0 == t)
                    .map_or(0.0, |e| e.1);
                s = t;
                (1.0 - q_here) * pc
            };
            total -= p.ln();
        }
        total / (tokens.len() - 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let cfg = SyntheticConfig {
            vocab: 64,
            ..Default::default()
        };
        let a = Synthetic::new(cfg.clone()).unwrap();
        let b = Synthetic::new(cfg).unwrap();
        assert_eq!(a.generate(5000, 0), b.generate(5000, 0));
        assert_ne!(a.generate(5000, 0), a.generate(5000, 1));
        assert!(a.generate(5000, 2).iter().all(|&t| t < 64));
    }

    #[test]
    fn true_model_nll_matches_the_floor_far_below_unigram() {
        let syn = Synthetic::new(SyntheticConfig::default()).unwrap();
        let toks = syn.generate(400_000, 0);
        let floor = syn.entropy_floor();
        let nll = syn.nll(&toks);
        assert!(nll.is_finite());
        assert!(
            (nll - floor).abs() < 0.02 * floor,
            "nll {nll} floor {floor}"
        );
        let mut counts = vec![0usize; 512];
        for &t in &toks {
            counts[t as usize] += 1;
        }
        let n = toks.len() as f64;
        let unigram: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| -(c as f64 / n) * (c as f64 / n).ln())
            .sum();
        eprintln!("synthetic default: floor {floor:.4} nats/token, unigram {unigram:.4}");
        assert!(floor < 0.3 * unigram, "floor {floor} unigram {unigram}");
    }

    #[test]
    fn copies_repeat_the_preceding_span() {
        let syn = Synthetic::new(SyntheticConfig {
            vocab: 32,
            copy_prob: 0.2,
            ..Default::default()
        })
        .unwrap();
        let toks = syn.generate(2000, 0);
        let k = syn.config().copy_len;
        let mut seen = 0;
        let mut i = 0;
        while i + k < toks.len() {
            if toks[i] == 31 {
                assert_eq!(toks[i + 1..=i + k], toks[i - k..i]);
                seen += 1;
                i += k;
            }
            i += 1;
        }
        assert!(seen > 10);
    }
}
