//! The dynamic policy between training steps: every `agent_k` steps the
//! agent's pending decision is closed (its reward, the Q-update, a line in
//! `ties.jsonl`) and the next decision is made for the next block (1, 2,
//! ..., L-1, then a new episode), editing the tie table. TYING.md describes
//! the algorithm and the rewards.

use super::setup::{AGENT_STREAM, REWARD_STREAM};
use super::Trainer;
use crate::config::RunConfig;
use crate::data::{Batch, Dataset, TrainBatcher};
use crate::rng::HostRng;
use crate::tying::agent::{AgentConfig, Decision, QAgent, TieRecord, Transition};
use crate::tying::reward::{self, RewardBaseline};
use crate::tying::settings::{AgentMoves, RewardSpan};
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// The dynamic policy's state between decisions (saved in checkpoints).
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct DynamicState {
    pub(super) agent: QAgent,
    episode: u64,
    /// The block the next decision is about (1..L-1).
    next_layer: usize,
    pending: Option<Pending>,
    /// Draws the random training batch of the paper's reward.
    reward_rng: HostRng,
    /// `--reward-baseline` (absent from checkpoints written before it).
    #[serde(default)]
    baseline: RewardBaseline,
}

/// A decision whose reward is not known yet.
#[derive(Clone, Serialize, Deserialize)]
struct Pending {
    state: Vec<usize>,
    decision: Decision,
    /// The episode the decision belongs to (the counter moves on after the
    /// last block's decision, before that decision is closed).
    episode: u64,
    /// Perplexity on the reward batch just before the action.
    ppl_before: f64,
    /// And just after it, with `--reward immediate`.
    #[serde(default)]
    ppl_after_action: Option<f64>,
}

impl DynamicState {
    /// The state before the first decision of a run with `n_layer` blocks;
    /// `None` when nothing is to decide (a static policy, or one block).
    pub(super) fn start(cfg: &RunConfig, n_layer: usize) -> Result<Option<DynamicState>> {
        if !has_agent(cfg, n_layer) {
            return Ok(None);
        }
        let t = &cfg.train;
        let mut ac = AgentConfig::new(n_layer, HostRng::derive(t.seed, AGENT_STREAM).next_u64());
        ac.paper_compat = cfg.tying.paper_compat;
        ac.encoding = cfg.tying.agent_input.encoding();
        ac.epsilon_schedule = cfg.agent.epsilon_schedule;
        ac.explore_draw = cfg.agent.explore_draw;
        ac.td_target = cfg.agent.td_target;
        Ok(Some(DynamicState {
            agent: QAgent::new(ac)?,
            episode: 0,
            next_layer: 1,
            pending: None,
            reward_rng: HostRng::derive(t.seed, REWARD_STREAM + 100),
            baseline: RewardBaseline::default(),
        }))
    }
}

/// Whether a run of `cfg` with `n_layer` blocks has an agent deciding ties
/// (a dynamic policy with more than one block).
pub(super) fn has_agent(cfg: &RunConfig, n_layer: usize) -> bool {
    cfg.tying.policy.is_dynamic() && n_layer > 1
}

/// The fixed windows of the training split whose perplexity (in eval mode)
/// the default reward compares before and after an action.
pub(super) fn reward_batch(cfg: &RunConfig, data: &Dataset) -> Result<Batch> {
    let t = &cfg.train;
    let mut reward_sampler = TrainBatcher::new(
        data.train.clone(),
        t.batch,
        cfg.model.n_ctx,
        HostRng::derive(t.seed, REWARD_STREAM),
    )?;
    Ok(reward_sampler.next_batch())
}

impl Trainer {
    /// Perplexity on the reward batch (eval mode).
    fn reward_batch_ppl(&mut self) -> Result<f64> {
        let b = &self.reward_batch;
        let (sum, count) = self
            .model
            .eval_loss(&b.inputs, &b.targets, b.rows, b.context)?;
        Ok((sum / count as f64).exp())
    }

    /// Closes the pending decision and makes the next one; returns the
    /// action applied (block, action), if any. Nothing on a replica other
    /// than rank 0, which holds no agent.
    pub(super) fn agent_step(&mut self) -> Result<Option<(usize, usize)>> {
        let Some(mut d) = self.dynamic.take() else {
            return Ok(None);
        };
        let result = self.agent_step_with(&mut d);
        self.dynamic = Some(d);
        result
    }

    fn agent_step_with(&mut self, d: &mut DynamicState) -> Result<Option<(usize, usize)>> {
        let n_layer = self.model.config().n_layer;
        let (steps, k) = (self.cfg.train.steps as u64, self.cfg.tying.agent_k as u64);
        let deciding = self.cfg.agent.decides_at(self.step, steps);
        if !deciding && d.pending.is_none() {
            // The table is fixed for the rest of the run (`--decide-until`).
            return Ok(None);
        }
        d.agent
            .set_planned_decisions(self.cfg.agent.planned_decisions(steps, k));
        let ppl_now = self.reward_batch_ppl()?;
        if let Some(p) = d.pending.take() {
            let r = if self.cfg.tying.paper_compat {
                // The code's reward: minus the perplexity of one random
                // training batch in eval mode.
                let mut sampler = TrainBatcher::new(
                    self.data.train.clone(),
                    self.cfg.train.batch,
                    self.cfg.model.n_ctx,
                    d.reward_rng.clone(),
                )?;
                let b = sampler.next_batch();
                d.reward_rng = sampler.rng().clone();
                let (sum, count) = self
                    .model
                    .eval_loss(&b.inputs, &b.targets, b.rows, b.context)?;
                reward::paper_reward(sum / count as f64)?
            } else {
                let unique = self.model.slots().table().trainable_slots().len();
                reward::relative_ppl_reward(
                    p.ppl_before,
                    p.ppl_after_action.unwrap_or(ppl_now),
                    self.cfg.tying.param_cost as f64,
                    unique,
                    self.cfg.agent.param_budget,
                    n_layer,
                )?
            };
            let window = self.cfg.agent.reward_baseline;
            let advantage = (window > 0).then(|| d.baseline.advantage(r, window));
            let table = self.model.slots().table();
            d.agent.learn(&Transition {
                state: &p.state,
                layer: p.decision.layer,
                action: p.decision.action,
                reward: advantage.unwrap_or(r),
                next_state: table.state(),
            })?;
            // The record carries the table right after that action, which
            // is the table now (nothing else changes it in between).
            let mut record = TieRecord::new(self.step, p.episode, &p.decision, r, table);
            record.advantage = advantage;
            self.files_mut()?.ties.write(&record)?;
        }
        if !deciding {
            return Ok(None);
        }
        let layer = d.next_layer;
        let table = self.model.slots().table();
        let state = table.state().to_vec();
        let limit = self.cfg.agent.param_limit;
        let within_limit = if limit > 0 {
            Some(table.actions_within_limit(layer, limit)?)
        } else {
            None
        };
        let growing = match self.cfg.agent.moves {
            AgentMoves::Any => None,
            AgentMoves::Grow => Some(table.actions_that_grow(layer)?),
        };
        let allowed = match (within_limit, growing) {
            (Some(limit), Some(grow)) => {
                let both: Vec<bool> = limit.iter().zip(&grow).map(|(&l, &g)| l && g).collect();
                // Growing never lowers the count, so above the limit (a
                // table that started with more blocks) a block stays put.
                Some(if both.contains(&true) {
                    both
                } else {
                    (0..=layer).map(|a| a == state[layer]).collect()
                })
            }
            (limit, grow) => limit.or(grow),
        };
        let decision = d.agent.decide_within(&state, layer, allowed.as_deref())?;
        self.model.apply_action(layer, decision.action)?;
        let applied = (layer, decision.action);
        let immediate =
            !self.cfg.tying.paper_compat && self.cfg.agent.reward == RewardSpan::Immediate;
        let ppl_after_action = if immediate {
            Some(self.reward_batch_ppl()?)
        } else {
            None
        };
        d.pending = Some(Pending {
            state,
            decision,
            episode: d.episode,
            ppl_before: ppl_now,
            ppl_after_action,
        });
        d.next_layer += 1;
        if d.next_layer >= n_layer {
            d.next_layer = 1;
            d.episode += 1;
            d.agent.end_episode();
        }
        Ok(Some(applied))
    }
}
