//! Tying policies (`--tying`): the dynamic agent and the static baselines
//! behind one interface.
//!
//! Every static policy is a fixed state vector s (`s[i]` = the block whose
//! weights block i uses, `s[i] = i` independent), built once for L blocks:
//!
//! | flag | s[i] | example, L = 6 |
//! |---|---|---|
//! | `none` | i (conventional training) | 0 1 2 3 4 5 |
//! | `all` | 0 (ALBERT-like: one block's weights everywhere) | 0 0 0 0 0 0 |
//! | `every:K` | K * floor(i / K) (consecutive groups of K share) | every:2 → 0 0 2 2 4 4 |
//! | `cyclic:K` | i mod K (the first K blocks repeat) | cyclic:2 → 0 1 0 1 0 1 |
//! | `sequence` | i - 1 for odd i, else i (odd blocks copy the previous one) | 0 0 2 2 4 4 |
//! | `reverse` | L-1-i in the second half (it mirrors the first) | 0 1 2 2 1 0 |
//! | `random` | uniform in 0..=i, fixed by the seed | |
//! | `pattern:s0,s1,...` | the given vector (length L, s[0] = 0, s[i] <= i) | |
//!
//! `dynamic` starts from `--init-ties` and lets the agent change it.
//!
//! `switch:STEP:A>B` trains with static policy A until step STEP and with B
//! from there on (e.g. `switch:1000:none>every:4`): one controlled change
//! of structure, to measure what ties and unties cost without an agent
//! (`--tie-merge` says what happens to the weights of a freed slot).

use anyhow::{bail, Context, Result};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

use super::table::{validate_state, InitTies};
use crate::rng::HostRng;

/// A tying policy. Its text form (`every:4`, `pattern:0,0,1`) is the same on
/// the command line and in `config.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TyingPolicy {
    Dynamic,
    None,
    All,
    Every(usize),
    Random,
    Pattern(Vec<usize>),
    Cyclic(usize),
    Sequence,
    Reverse,
    /// Static policy `before` until `step`, `after` from then on.
    Switch {
        step: u64,
        before: Box<TyingPolicy>,
        after: Box<TyingPolicy>,
    },
}

const USAGE: &str = "use dynamic, none, all, every:K, random, pattern:0,0,1,..., cyclic:K, sequence, reverse or switch:STEP:A>B";

/// Parses the `--tying` flag. A pattern's length is checked against the
/// model by [`TyingPolicy::check_blocks`].
impl FromStr for TyingPolicy {
    type Err = anyhow::Error;

    fn from_str(flag: &str) -> Result<Self> {
        let flag = flag.trim();
        let (name, arg) = match flag.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (flag, None),
        };
        let group_size = |arg: Option<&str>| -> Result<usize> {
            let a = arg.with_context(|| format!("--tying {name}:K needs a group size K"))?;
            let k: usize = a
                .trim()
                .parse()
                .with_context(|| format!("--tying {name}:{a}: K must be a positive integer"))?;
            if k == 0 {
                bail!("--tying {name}:0: K must be at least 1");
            }
            Ok(k)
        };
        let policy = match (name, arg) {
            ("dynamic", None) => TyingPolicy::Dynamic,
            ("none", None) => TyingPolicy::None,
            ("all", None) => TyingPolicy::All,
            ("random", None) => TyingPolicy::Random,
            ("sequence", None) => TyingPolicy::Sequence,
            ("reverse", None) => TyingPolicy::Reverse,
            ("every", a) => TyingPolicy::Every(group_size(a)?),
            ("cyclic", a) => TyingPolicy::Cyclic(group_size(a)?),
            ("pattern", Some(a)) => {
                let s = a
                    .split(',')
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| {
                        format!("--tying pattern:{a}: entries must be non-negative integers separated by commas")
                    })?;
                validate_state(&s).with_context(|| format!("--tying pattern:{a}"))?;
                TyingPolicy::Pattern(s)
            }
            ("pattern", None) => {
                bail!("--tying pattern needs a state vector, e.g. pattern:0,0,1,1")
            }
            ("switch", Some(a)) => {
                let usage = || {
                    format!("--tying switch:{a}: use switch:STEP:A>B with static policies A and B, e.g. switch:1000:none>every:4")
                };
                let (step, rest) = a.split_once(':').with_context(usage)?;
                let step: u64 = step.trim().parse().with_context(usage)?;
                let (before, after) = rest.split_once('>').with_context(usage)?;
                let before: TyingPolicy = before.parse()?;
                let after: TyingPolicy = after.parse()?;
                for p in [&before, &after] {
                    if p.is_dynamic() || matches!(p, TyingPolicy::Switch { .. }) {
                        bail!("{}", usage());
                    }
                }
                TyingPolicy::Switch {
                    step,
                    before: Box::new(before),
                    after: Box::new(after),
                }
            }
            ("switch", None) => {
                bail!("--tying switch needs STEP:A>B, e.g. switch:1000:none>every:4")
            }
            (n, Some(_))
                if ["dynamic", "none", "all", "random", "sequence", "reverse"].contains(&n) =>
            {
                bail!("--tying {flag}: '{n}' takes no argument")
            }
            _ => bail!("--tying {flag}: unknown policy; {USAGE}"),
        };
        Ok(policy)
    }
}

impl fmt::Display for TyingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TyingPolicy::Dynamic => f.write_str("dynamic"),
            TyingPolicy::None => f.write_str("none"),
            TyingPolicy::All => f.write_str("all"),
            TyingPolicy::Every(k) => write!(f, "every:{k}"),
            TyingPolicy::Random => f.write_str("random"),
            TyingPolicy::Pattern(s) => {
                let entries: Vec<String> = s.iter().map(|x| x.to_string()).collect();
                write!(f, "pattern:{}", entries.join(","))
            }
            TyingPolicy::Cyclic(k) => write!(f, "cyclic:{k}"),
            TyingPolicy::Sequence => f.write_str("sequence"),
            TyingPolicy::Reverse => f.write_str("reverse"),
            TyingPolicy::Switch {
                step,
                before,
                after,
            } => write!(f, "switch:{step}:{before}>{after}"),
        }
    }
}

impl Serialize for TyingPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TyingPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| de::Error::custom(format!("{e:#}")))
    }
}

impl TyingPolicy {
    /// Checks that the policy fits a model of `n_layer` blocks: a pattern
    /// needs one entry per block.
    pub fn check_blocks(&self, n_layer: usize) -> Result<()> {
        match self {
            TyingPolicy::Pattern(s) if s.len() != n_layer => bail!(
                "--tying {self}: has {} entries but the model has {n_layer} blocks",
                s.len()
            ),
            TyingPolicy::Switch { before, after, .. } => {
                before.check_blocks(n_layer)?;
                after.check_blocks(n_layer)
            }
            _ => Ok(()),
        }
    }

    pub fn is_dynamic(&self) -> bool {
        matches!(self, TyingPolicy::Dynamic)
    }

    /// The state for `n_layer` blocks: the fixed one for static policies, the
    /// starting one (from `init`) for the dynamic policy. `seed` is used by
    /// `random` only.
    pub fn initial_state(&self, n_layer: usize, seed: u64, init: InitTies) -> Result<Vec<usize>> {
        if n_layer == 0 {
            bail!("a tying policy needs at least one block (n_layer = 0)");
        }
        let s: Vec<usize> = match self {
            TyingPolicy::Dynamic => match init {
                InitTies::Independent => (0..n_layer).collect(),
                InitTies::Zero => vec![0; n_layer],
            },
            TyingPolicy::None => (0..n_layer).collect(),
            TyingPolicy::All => vec![0; n_layer],
            TyingPolicy::Every(k) => (0..n_layer).map(|i| k * (i / k)).collect(),
            TyingPolicy::Cyclic(k) => (0..n_layer).map(|i| i % k).collect(),
            TyingPolicy::Sequence => (0..n_layer).map(|i| i - (i % 2)).collect(),
            TyingPolicy::Reverse => (0..n_layer)
                .map(|i| {
                    if n_layer - 1 - i < i {
                        n_layer - 1 - i
                    } else {
                        i
                    }
                })
                .collect(),
            TyingPolicy::Random => {
                let mut rng = HostRng::derive(seed, 0x7121_0003);
                (0..n_layer)
                    .map(|i| rng.below(i as u64 + 1) as usize)
                    .collect()
            }
            TyingPolicy::Switch { before, .. } => before.initial_state(n_layer, seed, init)?,
            TyingPolicy::Pattern(p) => {
                if p.len() != n_layer {
                    bail!(
                        "--tying pattern has {} entries but the model has {n_layer} blocks",
                        p.len()
                    );
                }
                p.clone()
            }
        };
        validate_state(&s)?;
        Ok(s)
    }

    /// The state a `switch` policy moves to at `step` (`None` at every
    /// other step and for every other policy).
    pub fn switch_at(
        &self,
        step: u64,
        n_layer: usize,
        seed: u64,
        init: InitTies,
    ) -> Result<Option<Vec<usize>>> {
        match self {
            TyingPolicy::Switch {
                step: at, after, ..
            } if *at == step => Ok(Some(after.initial_state(n_layer, seed, init)?)),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flag parsed and checked against `l` blocks.
    fn parse(flag: &str, l: usize) -> Result<TyingPolicy> {
        let p: TyingPolicy = flag.parse()?;
        p.check_blocks(l)?;
        Ok(p)
    }

    fn state(flag: &str, l: usize) -> Vec<usize> {
        parse(flag, l)
            .unwrap()
            .initial_state(l, 1, InitTies::Independent)
            .unwrap()
    }

    #[test]
    fn static_policies_for_six_blocks() {
        assert_eq!(state("none", 6), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(state("all", 6), vec![0; 6]);
        assert_eq!(state("every:2", 6), vec![0, 0, 2, 2, 4, 4]);
        assert_eq!(state("every:4", 6), vec![0, 0, 0, 0, 4, 4]);
        assert_eq!(state("every:1", 6), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(state("cyclic:2", 6), vec![0, 1, 0, 1, 0, 1]);
        assert_eq!(state("cyclic:4", 6), vec![0, 1, 2, 3, 0, 1]);
        assert_eq!(state("sequence", 6), vec![0, 0, 2, 2, 4, 4]);
        assert_eq!(state("sequence", 5), vec![0, 0, 2, 2, 4]);
        assert_eq!(state("reverse", 6), vec![0, 1, 2, 2, 1, 0]);
        assert_eq!(state("reverse", 5), vec![0, 1, 2, 1, 0]);
        assert_eq!(state("pattern:0,0,1,3", 4), vec![0, 0, 1, 3]);
        assert_eq!(state(" pattern: 0, 0 ,2", 3), vec![0, 0, 2]);
    }

    #[test]
    fn switch_starts_with_one_policy_and_moves_to_the_other_at_its_step() {
        let p = parse("switch:10:none>every:2", 4).unwrap();
        assert!(!p.is_dynamic());
        let init = InitTies::Independent;
        assert_eq!(p.initial_state(4, 1, init).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(p.switch_at(9, 4, 1, init).unwrap(), None);
        assert_eq!(p.switch_at(10, 4, 1, init).unwrap(), Some(vec![0, 0, 2, 2]));
        assert_eq!(p.switch_at(11, 4, 1, init).unwrap(), None);
        let q = parse("switch:5:all>pattern:0,1,1", 3).unwrap();
        assert_eq!(q.initial_state(3, 1, init).unwrap(), vec![0, 0, 0]);
        assert_eq!(
            parse("none", 3).unwrap().switch_at(0, 3, 1, init).unwrap(),
            None
        );
    }

    #[test]
    fn dynamic_starts_from_init_ties() {
        let p = parse("dynamic", 4).unwrap();
        assert!(p.is_dynamic());
        assert!(!parse("all", 4).unwrap().is_dynamic());
        assert_eq!(p.initial_state(4, 0, InitTies::Zero).unwrap(), vec![0; 4]);
        assert_eq!(
            p.initial_state(4, 0, InitTies::Independent).unwrap(),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn random_is_valid_fixed_by_seed_and_varies_with_it() {
        let p = parse("random", 12).unwrap();
        let a = p.initial_state(12, 5, InitTies::Independent).unwrap();
        assert_eq!(a, p.initial_state(12, 5, InitTies::Independent).unwrap());
        assert_ne!(a, p.initial_state(12, 6, InitTies::Independent).unwrap());
        assert!(a.iter().enumerate().all(|(i, &j)| j <= i));
    }

    #[test]
    fn bad_flags_get_clear_errors() {
        let err = |flag: &str, l: usize| format!("{:#}", parse(flag, l).unwrap_err());
        assert!(err("pattern:0,0,1", 4).contains("3 entries but the model has 4"));
        assert!(err("pattern:0,2,1", 3).contains("block 1"));
        assert!(err("pattern:1,0,0", 3).contains("block 0"));
        assert!(err("pattern:0,x", 2).contains("non-negative integers"));
        assert!(err("pattern", 2).contains("needs a state vector"));
        assert!(err("every:0", 4).contains("at least 1"));
        assert!(err("every", 4).contains("group size"));
        assert!(err("cyclic:-2", 4).contains("positive integer"));
        assert!(err("all:3", 4).contains("takes no argument"));
        assert!(err("tied", 4).contains("unknown policy"));
        assert!(err("switch:10:none", 4).contains("switch:STEP:A>B"));
        assert!(err("switch:x:none>all", 4).contains("switch:STEP:A>B"));
        assert!(err("switch:10:none>dynamic", 4).contains("static policies"));
        assert!(err("switch:10:none>switch:20:all>none", 4).contains("static policies"));
        assert!(err("switch", 4).contains("needs STEP:A>B"));
    }

    #[test]
    fn the_text_form_round_trips() {
        for flag in [
            "dynamic",
            "none",
            "all",
            "every:4",
            "random",
            "pattern:0,0,1,3",
            "cyclic:2",
            "sequence",
            "reverse",
            "switch:10:none>every:2",
        ] {
            let p: TyingPolicy = flag.parse().unwrap();
            assert_eq!(p.to_string(), flag);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{flag}\""));
        }
        let e = serde_json::from_str::<TyingPolicy>("\"every:x\"").unwrap_err();
        assert!(e.to_string().contains("positive integer"), "{e}");
    }
}
