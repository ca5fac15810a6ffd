//! The dynamic policy's settings beyond the paper's: `[agent]` in
//! config.toml and their `dyntie train` flags.
//!
//! | setting | paper (`--paper-compat`) | what it changes |
//! |---|---|---|
//! | `tie_merge` | `replace` | a tie that frees block i's slot: `replace` drops i's weights (block i takes j's); `average` first folds them into j's slot, weighted by the blocks on each (weights and AdamW moments) |
//! | `decide_until` | `1.0` | the fraction of the steps during which the agent decides; after it the table is fixed and the chosen structure trains (no reward evaluations either) |
//! | `epsilon_schedule` | `episodes` | `episodes`: epsilon x 0.95 after each episode, floor 0.01; `linear:F`: from 1 down to 0.01 over the first fraction F of the decisions the run will make, then 0.01 |
//! | `explore_draw` | `uniform` | an explored action for block i: `uniform` over its i+1 actions (so "independent" has probability 1/(i+1)); `balanced`: "independent" with probability 1/2, else a uniform tie |
//! | `reward_baseline` | `0` | N > 0: the agent learns from the reward minus a moving baseline (the mean of the first N rewards, then an exponential average with weight 1/N) |
//! | `param_budget` | `0` | B > 0: `--param-cost` is charged only for trainable blocks beyond B |
//! | `param_limit` | `0` | B > 0: a hard limit: the agent only takes actions that leave at most B trainable blocks (and, while above it, only actions that lower their number) |
//! | `reward` | `interval` | what the default reward compares: `interval`, the reward batch's perplexity just before the action and after the k steps that follow it; `immediate`, just before and just after the action (the same weights but for the action, so the training steps' noise is not in it) |
//! | `moves` | `any` | which actions the agent may take: `any` (tie to any earlier block, or independent); `grow`: a block only stays where it is or becomes independent (a copy), so trained weights are never replaced (with `--init-ties zero` the table grows from one block) |
//! | `td_target` | `same` | the Q-value bootstrapped in the TD target: `next`, the next decision's block (the MDP the loop walks); `same`, the same block's group (the code) |
//!
//! `--paper-compat` always bootstraps from the same block, whatever
//! `td_target` says; runs made before `td_target` existed without
//! `--paper-compat` bootstrapped from the next block.
//!
//! A config.toml without `[agent]` (written before these settings existed)
//! reads as the paper's settings, which is what those runs did.

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// What a tie does with the weights of the block that joins another's slot
/// when its own slot is freed by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TieMerge {
    /// The block's weights are dropped (the paper).
    #[default]
    Replace,
    /// The slot becomes the average of both, weighted by the number of
    /// blocks each served (weights and AdamW moments).
    Average,
}

crate::choice_text!(TieMerge, "tie merge");

/// How the exploration probability falls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EpsilonSchedule {
    /// The paper: 1.0, times 0.95 after every episode, floor 0.01.
    #[default]
    Episodes,
    /// From 1.0 down to the floor linearly over the first `fraction` of the
    /// decisions the run will make, then the floor: measured in decisions,
    /// so it reaches its floor whatever the run's length and `--agent-k`.
    Linear { fraction: f64 },
}

impl EpsilonSchedule {
    pub fn parse(flag: &str) -> Result<Self> {
        let flag = flag.trim();
        if flag == "episodes" {
            return Ok(EpsilonSchedule::Episodes);
        }
        if let Some(f) = flag.strip_prefix("linear:") {
            let fraction: f64 = f.trim().parse().with_context(|| {
                format!("--epsilon-schedule {flag}: the fraction must be a number in (0, 1]")
            })?;
            ensure!(
                fraction > 0.0 && fraction <= 1.0,
                "--epsilon-schedule {flag}: the fraction must be in (0, 1]"
            );
            return Ok(EpsilonSchedule::Linear { fraction });
        }
        bail!("--epsilon-schedule '{flag}' is unknown: use episodes or linear:F (F in (0, 1])")
    }

    /// Epsilon before decision `decision` (0-based) of `planned`, for the
    /// linear schedule (the episode schedule is kept by the agent itself).
    pub fn linear_epsilon(fraction: f64, decision: u64, planned: u64, floor: f64) -> f64 {
        let progress = decision as f64 / (fraction * planned as f64);
        if progress.is_nan() || progress >= 1.0 {
            return floor;
        }
        1.0 - (1.0 - floor) * progress
    }
}

impl TryFrom<String> for EpsilonSchedule {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<EpsilonSchedule> for String {
    fn from(e: EpsilonSchedule) -> String {
        match e {
            EpsilonSchedule::Episodes => "episodes".into(),
            EpsilonSchedule::Linear { fraction } => format!("linear:{fraction}"),
        }
    }
}

/// How an explored action is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ExploreDraw {
    /// Uniform over block i's i+1 actions (the paper).
    #[default]
    Uniform,
    /// "Independent" with probability 1/2, otherwise a uniform tie: random
    /// play keeps about half the blocks rather than drifting towards
    /// tying nearly everything.
    Balanced,
}

crate::choice_text!(ExploreDraw, "explore draw");

/// Whose Q-values the TD target bootstraps from after a decision on block i.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TdTarget {
    /// The next decision's block (i + 1, or block 1 of the next episode).
    #[default]
    Next,
    /// Block i's own group again (the authors' code).
    Same,
}

crate::choice_text!(TdTarget, "TD target");

/// What the relative-perplexity reward compares (not used by `--paper-compat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RewardSpan {
    /// Before the action and after the k training steps that follow it.
    #[default]
    Interval,
    /// Just before and just after the action, with no training between:
    /// what the action itself did to the model (one more evaluation).
    Immediate,
}

crate::choice_text!(RewardSpan, "reward");

/// Which actions the agent may take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum AgentMoves {
    /// Tie block i to any earlier block, or make it independent (the paper).
    #[default]
    Any,
    /// Keep block i where it is or make it independent: the table only
    /// grows, and no trained weights are replaced.
    Grow,
}

crate::choice_text!(AgentMoves, "agent moves");

/// `[agent]` in config.toml.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "AgentSettings::legacy")]
pub struct AgentSettings {
    pub tie_merge: TieMerge,
    /// Fraction of the steps during which the agent decides, in (0, 1].
    pub decide_until: f64,
    pub epsilon_schedule: EpsilonSchedule,
    pub explore_draw: ExploreDraw,
    /// Rewards in the moving baseline's window; 0: no baseline.
    pub reward_baseline: u64,
    /// Trainable blocks that `--param-cost` does not charge; 0: all are.
    pub param_budget: usize,
    pub td_target: TdTarget,
    pub reward: RewardSpan,
    /// At most this many trainable blocks (a hard limit); 0: none.
    pub param_limit: usize,
    pub moves: AgentMoves,
}

impl AgentSettings {
    /// The authors' code.
    pub fn paper() -> Self {
        AgentSettings {
            td_target: TdTarget::Same,
            ..Self::legacy()
        }
    }

    /// What every run made before `[agent]` existed did (the paper's code,
    /// except that the TD target bootstrapped from the next block unless
    /// `--paper-compat` was given).
    pub fn legacy() -> Self {
        AgentSettings {
            tie_merge: TieMerge::Replace,
            decide_until: 1.0,
            epsilon_schedule: EpsilonSchedule::Episodes,
            explore_draw: ExploreDraw::Uniform,
            reward_baseline: 0,
            param_budget: 0,
            td_target: TdTarget::Next,
            reward: RewardSpan::Interval,
            param_limit: 0,
            moves: AgentMoves::Any,
        }
    }

    /// Checks the settings; `paper_compat` and `param_cost` are `[tying]`'s.
    pub fn validate(&self, paper_compat: bool, param_cost: f32) -> Result<()> {
        ensure!(
            self.param_budget == 0 || param_cost > 0.0,
            "--param-budget {} only changes which blocks --param-cost charges: give a --param-cost above 0",
            self.param_budget
        );
        ensure!(
            self.decide_until > 0.0 && self.decide_until <= 1.0,
            "--decide-until {} must be in (0, 1] (a fraction of the training steps)",
            self.decide_until
        );
        if let EpsilonSchedule::Linear { fraction } = self.epsilon_schedule {
            ensure!(
                fraction > 0.0 && fraction <= 1.0,
                "--epsilon-schedule linear:{fraction}: the fraction must be in (0, 1]"
            );
        }
        let ignored_by_paper = AgentSettings {
            td_target: TdTarget::Same,
            ..self.clone()
        };
        if paper_compat && ignored_by_paper != Self::paper() {
            bail!(
                "--paper-compat reproduces the authors' code, which has --tie-merge replace, \
                 --decide-until 1, --epsilon-schedule episodes, --explore-draw uniform, \
                 --reward-baseline 0, --param-budget 0, --param-limit 0, --agent-moves any and its own reward \
                 (no --reward); \
                 drop the others or --paper-compat"
            );
        }
        Ok(())
    }

    /// The last step (exclusive) at which the agent makes a decision.
    pub fn decision_limit(&self, steps: u64) -> u64 {
        ((self.decide_until * steps as f64).round() as u64).min(steps)
    }

    /// Whether the agent decides at `step` of a run of `steps` steps.
    pub fn decides_at(&self, step: u64, steps: u64) -> bool {
        step < self.decision_limit(steps)
    }

    /// How many decisions a run of `steps` steps with one every `k` makes.
    pub fn planned_decisions(&self, steps: u64, k: u64) -> u64 {
        self.decision_limit(steps).div_ceil(k.max(1))
    }
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self::legacy()
    }
}

/// The `[agent]` flags of `dyntie train`.
#[derive(Args, Debug, Clone, Default)]
pub struct AgentFlags {
    /// What a tie that frees a block's slot does with its weights: replace
    /// (dropped, the paper) or average (folded into the shared slot,
    /// weighted by the blocks on each; AdamW moments too).
    #[arg(long = "tie-merge", value_enum)]
    pub tie_merge: Option<TieMerge>,
    /// Fraction of the steps during which the agent decides (0, 1]; after
    /// it the tie table stays fixed and no reward is evaluated.
    #[arg(long = "decide-until")]
    pub decide_until: Option<f64>,
    /// Exploration: episodes (x0.95 per episode, the paper) or linear:F
    /// (from 1 to 0.01 over the first fraction F of the run's decisions).
    #[arg(long = "epsilon-schedule")]
    pub epsilon_schedule: Option<String>,
    /// How an explored action is drawn: uniform over the block's actions
    /// (the paper) or balanced ("independent" half the time).
    #[arg(long = "explore-draw", value_enum)]
    pub explore_draw: Option<ExploreDraw>,
    /// The agent learns from the reward minus a moving baseline over N
    /// rewards (0: off, the paper).
    #[arg(long = "reward-baseline", value_name = "N")]
    pub reward_baseline: Option<u64>,
    /// Trainable blocks that --param-cost does not charge (0: it charges
    /// every block, the paper).
    #[arg(long = "param-budget", value_name = "B")]
    pub param_budget: Option<usize>,
    /// The TD target's bootstrap: next (the next decision's block) or same
    /// (the same block's group, as the authors' code).
    #[arg(long = "td-target", value_enum)]
    pub td_target: Option<TdTarget>,
    /// What the reward compares: interval (the perplexity before the action
    /// and after the k steps that follow) or immediate (just before and just
    /// after the action, no training between).
    #[arg(long, value_enum)]
    pub reward: Option<RewardSpan>,
    /// A hard limit of B trainable blocks: the agent takes only actions that
    /// stay within it (and, while above it, lower the count). 0: none.
    #[arg(long = "param-limit", value_name = "B")]
    pub param_limit: Option<usize>,
    /// Which actions the agent may take: any (tie to an earlier block or
    /// independent, the paper) or grow (a block stays or becomes
    /// independent, so trained weights are never replaced; start from one
    /// block with --init-ties zero).
    #[arg(long = "agent-moves", value_enum)]
    pub agent_moves: Option<AgentMoves>,
}

impl AgentFlags {
    /// Overrides `settings` with the flags given.
    pub fn apply(&self, settings: &mut AgentSettings) -> Result<()> {
        if let Some(m) = self.tie_merge {
            settings.tie_merge = m;
        }
        if let Some(d) = self.decide_until {
            settings.decide_until = d;
        }
        if let Some(e) = &self.epsilon_schedule {
            settings.epsilon_schedule = EpsilonSchedule::parse(e)?;
        }
        if let Some(d) = self.explore_draw {
            settings.explore_draw = d;
        }
        if let Some(n) = self.reward_baseline {
            settings.reward_baseline = n;
        }
        if let Some(b) = self.param_budget {
            settings.param_budget = b;
        }
        if let Some(t) = self.td_target {
            settings.td_target = t;
        }
        if let Some(r) = self.reward {
            settings.reward = r;
        }
        if let Some(b) = self.param_limit {
            settings.param_limit = b;
        }
        if let Some(m) = self.agent_moves {
            settings.moves = m;
        }
        Ok(())
    }

    /// The flags given (which a resume refuses).
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--tie-merge", self.tie_merge.is_some()),
            ("--decide-until", self.decide_until.is_some()),
            ("--epsilon-schedule", self.epsilon_schedule.is_some()),
            ("--explore-draw", self.explore_draw.is_some()),
            ("--reward-baseline", self.reward_baseline.is_some()),
            ("--param-budget", self.param_budget.is_some()),
            ("--td-target", self.td_target.is_some()),
            ("--reward", self.reward.is_some()),
            ("--param-limit", self.param_limit.is_some()),
            ("--agent-moves", self.agent_moves.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, given)| given.then_some(f))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_print_and_reject_bad_values() {
        assert_eq!(
            EpsilonSchedule::parse("episodes").unwrap(),
            EpsilonSchedule::Episodes
        );
        let lin = EpsilonSchedule::parse("linear:0.5").unwrap();
        assert_eq!(lin, EpsilonSchedule::Linear { fraction: 0.5 });
        assert_eq!(String::from(lin), "linear:0.5");
        for bad in ["linear:0", "linear:1.5", "linear:x", "linear", "cosine"] {
            assert!(EpsilonSchedule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!("average".parse::<TieMerge>().unwrap(), TieMerge::Average);
        assert_eq!(
            "balanced".parse::<ExploreDraw>().unwrap(),
            ExploreDraw::Balanced
        );
        assert!("greedy".parse::<ExploreDraw>().is_err());
        assert_eq!("same".parse::<TdTarget>().unwrap(), TdTarget::Same);
        assert!("previous".parse::<TdTarget>().is_err());
        assert_eq!(
            "immediate".parse::<RewardSpan>().unwrap(),
            RewardSpan::Immediate
        );
        assert!("later".parse::<RewardSpan>().is_err());
        assert!("mean".parse::<TieMerge>().is_err());
    }

    #[test]
    fn linear_epsilon_reaches_the_floor_at_the_given_fraction() {
        // 100 planned decisions, floor reached after 50.
        let e = |d| EpsilonSchedule::linear_epsilon(0.5, d, 100, 0.01);
        assert_eq!(e(0), 1.0);
        assert!((e(25) - (1.0 - 0.99 * 0.5)).abs() < 1e-12);
        assert_eq!(e(50), 0.01);
        assert_eq!(e(99), 0.01);
        assert_eq!(EpsilonSchedule::linear_epsilon(0.5, 0, 0, 0.01), 0.01);
    }

    #[test]
    fn decision_phase_in_steps_and_decisions() {
        let mut s = AgentSettings::paper();
        // The paper: every multiple of k below the last step.
        assert_eq!(s.planned_decisions(2000, 4), 500);
        assert!(s.decides_at(1996, 2000) && !s.decides_at(2000, 2000));
        s.decide_until = 0.5;
        assert_eq!(s.decision_limit(2000), 1000);
        assert!(s.decides_at(996, 2000) && !s.decides_at(1000, 2000));
        assert_eq!(s.planned_decisions(2000, 4), 250);
        assert_eq!(s.planned_decisions(10, 4), 2); // steps 0 and 4
    }

    #[test]
    fn validation_and_paper_compat() {
        let mut s = AgentSettings::paper();
        s.validate(true, 0.0).unwrap();
        s.decide_until = 0.0;
        assert!(s
            .validate(false, 0.0)
            .unwrap_err()
            .to_string()
            .contains("(0, 1]"));
        s.decide_until = 0.6;
        s.validate(false, 0.0).unwrap();
        s.param_budget = 3;
        assert!(s.validate(false, 0.0).is_err());
        s.validate(false, 0.5).unwrap();
        assert!(s
            .validate(true, 0.5)
            .unwrap_err()
            .to_string()
            .contains("--paper-compat"));
        // A config.toml without [agent] or with only some fields.
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default = "AgentSettings::legacy")]
            agent: AgentSettings,
        }
        let empty: Doc = toml::from_str("").unwrap();
        assert_eq!(empty.agent, AgentSettings::legacy());
        assert_eq!(empty.agent.td_target, TdTarget::Next);
        let some: Doc = toml::from_str("[agent]\ntie_merge = \"average\"\n").unwrap();
        assert_eq!(some.agent.tie_merge, TieMerge::Average);
        assert_eq!(some.agent.decide_until, 1.0);
        let sched: Doc = toml::from_str("[agent]\nepsilon_schedule = \"linear:0.25\"\n").unwrap();
        assert_eq!(
            sched.agent.epsilon_schedule,
            EpsilonSchedule::Linear { fraction: 0.25 }
        );
        assert!(toml::from_str::<Doc>("[agent]\nepsilon_schedule = \"fast\"\n").is_err());
        assert!(toml::from_str::<Doc>("[agent]\nspeed = 1\n").is_err());
    }
}
