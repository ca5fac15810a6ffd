//! The tie table: which slot holds each block's weights (TYING.md).
//!
//! Slots are numbered `0..n_layer` (there can never be more live slots than
//! blocks); a new slot takes the lowest free number. The table only does the
//! bookkeeping: every change returns a [`TieEffect`] that the slot store
//! applies to the real buffers (free one slot, or allocate one as a copy of
//! another, weights and AdamW moments).

use anyhow::{bail, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

pub use super::settings::TieMerge;

/// How the blocks start (`--init-ties`).
///
/// Checkpoints written before the options had one spelling name the values
/// capitalized (`"Independent"`, `"Shared"`); the aliases still read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitTies {
    /// Every block on its own slot, `s[i] = i`.
    #[value(alias = "Independent")]
    Independent,
    /// `s` all zeros. By default every block really shares slot 0; under
    /// paper-compat semantics the blocks keep their own slots (the code's
    /// initial state: own random weights, frozen until the agent acts).
    #[value(alias = "Zero")]
    Zero,
}
crate::choice_text!(InitTies, "init-ties mode");

/// Where the gradients of a tied block go (`--tie-grad`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TieGrad {
    /// Every block on a slot accumulates its gradient into the slot.
    #[value(alias = "Shared")]
    Shared,
    /// Only blocks with `s[i] = i` send gradients; tied blocks are frozen
    /// aliases (the paper code).
    #[value(alias = "Frozen")]
    Frozen,
}
crate::choice_text!(TieGrad, "tie-grad mode");

/// How ties behave: the clean default or the paper code's (`--paper-compat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TieOptions {
    pub init: InitTies,
    /// Paper-compat: untie only marks the block independent, it stays on its
    /// former source's slot; `InitTies::Zero` keeps the blocks' own slots.
    pub paper_compat: bool,
    pub tie_grad: TieGrad,
    /// What a tie that frees a slot does with its weights (`--tie-merge`;
    /// absent from tables saved before it existed, which replaced).
    #[serde(default)]
    pub merge: TieMerge,
}

impl TieOptions {
    /// The paper code's behaviour: s starts at zeros over the blocks' own
    /// frozen weights, tied blocks are frozen, untie keeps the alias.
    pub fn paper() -> Self {
        TieOptions {
            init: InitTies::Zero,
            paper_compat: true,
            tie_grad: TieGrad::Frozen,
            merge: TieMerge::Replace,
        }
    }
}

impl Default for TieOptions {
    fn default() -> Self {
        TieOptions {
            init: InitTies::Independent,
            paper_compat: false,
            tie_grad: TieGrad::Shared,
            merge: TieMerge::Replace,
        }
    }
}

/// A new slot the store must allocate as a copy of `from` (weights and
/// AdamW moments; gradients start at zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotCopy {
    pub slot: usize,
    pub from: usize,
}

/// Fold slot `from` into slot `into` before `from` is freed:
/// `into = (1 - from_weight) * into + from_weight * from`, for the weights
/// and both AdamW moments.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotMerge {
    pub into: usize,
    pub from: usize,
    pub from_weight: f32,
}

/// What the slot store must do after a table change. Apply `created`, then
/// `merged`, then `freed` (a single change never needs both a creation and
/// a free today, but the order is safe).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TieEffect {
    /// A slot that lost its last block: free its parameters, gradients, moments.
    pub freed: Option<usize>,
    pub created: Option<SlotCopy>,
    pub merged: Option<SlotMerge>,
}

impl TieEffect {
    pub fn is_noop(&self) -> bool {
        self.freed.is_none() && self.created.is_none() && self.merged.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TieTable {
    options: TieOptions,
    /// s[i]: the block whose weights block i took when tied (i when independent).
    state: Vec<usize>,
    /// Block -> slot.
    slot_of: Vec<usize>,
    /// Slot -> number of blocks on it (0 = free).
    refcount: Vec<usize>,
}

impl TieTable {
    /// The initial table for `n_layer` blocks.
    pub fn new(n_layer: usize, options: TieOptions) -> Result<Self> {
        if n_layer == 0 {
            bail!("the tie table needs at least one block (n_layer = 0)");
        }
        let mut t = match options.init {
            InitTies::Independent => Self::from_state(&(0..n_layer).collect::<Vec<_>>(), options)?,
            InitTies::Zero => Self::from_state(&vec![0; n_layer], options)?,
        };
        if options.paper_compat && options.init == InitTies::Zero {
            // The code starts from s = 0 but never moved any weights.
            t.slot_of = (0..n_layer).collect();
            t.refcount = vec![1; n_layer];
        }
        Ok(t)
    }

    /// A table realising state `s` (static policies, checkpoints): block i
    /// shares the slot of block `s[i]`, or owns slot i when `s[i] = i`.
    pub fn from_state(s: &[usize], options: TieOptions) -> Result<Self> {
        validate_state(s)?;
        let n = s.len();
        let mut slot_of = vec![0; n];
        let mut refcount = vec![0; n];
        for (i, &j) in s.iter().enumerate() {
            slot_of[i] = if j == i { i } else { slot_of[j] };
            refcount[slot_of[i]] += 1;
        }
        Ok(TieTable {
            options,
            state: s.to_vec(),
            slot_of,
            refcount,
        })
    }

    pub fn n_layer(&self) -> usize {
        self.state.len()
    }

    pub fn options(&self) -> TieOptions {
        self.options
    }

    /// The state vector s, the agent's input.
    pub fn state(&self) -> &[usize] {
        &self.state
    }

    /// Block -> slot for every block.
    pub fn slots(&self) -> &[usize] {
        &self.slot_of
    }

    pub fn slot_of(&self, layer: usize) -> usize {
        self.slot_of[layer]
    }

    /// Number of blocks on `slot` (0 when the slot is free).
    pub fn refcount(&self, slot: usize) -> usize {
        self.refcount[slot]
    }

    /// The slot's owner: its lowest block, `None` for a free slot.
    pub fn owner(&self, slot: usize) -> Option<usize> {
        self.slot_of.iter().position(|&s| s == slot)
    }

    /// Live slots in increasing order.
    pub fn live_slots(&self) -> Vec<usize> {
        (0..self.refcount.len())
            .filter(|&s| self.refcount[s] > 0)
            .collect()
    }

    /// Whether block i's gradients reach its slot.
    pub fn receives_grad(&self, layer: usize) -> bool {
        match self.options.tie_grad {
            TieGrad::Shared => true,
            TieGrad::Frozen => self.state[layer] == layer,
        }
    }

    /// Live slots that receive a gradient from at least one block: these are
    /// the trainable ones (AdamW steps them, they need gradients and moments).
    pub fn trainable_slots(&self) -> Vec<usize> {
        let mut out: Vec<usize> = (0..self.n_layer())
            .filter(|&i| self.receives_grad(i))
            .map(|i| self.slot_of[i])
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Tie block i to block j (j < i): i moves onto j's current slot. When
    /// that frees i's old slot and the options say `average`, the old slot
    /// is first folded into j's, weighted by the blocks each served.
    pub fn tie(&mut self, i: usize, j: usize) -> Result<TieEffect> {
        self.check_layer(i)?;
        if j >= i {
            bail!("cannot tie block {i} to block {j}: a block ties only to an earlier one");
        }
        self.state[i] = j;
        let (old, new) = (self.slot_of[i], self.slot_of[j]);
        if old == new {
            return Ok(TieEffect::default());
        }
        let served = self.refcount[new];
        self.slot_of[i] = new;
        self.refcount[new] += 1;
        self.refcount[old] -= 1;
        let freed = (self.refcount[old] == 0).then_some(old);
        let merged = match (freed, self.options.merge) {
            (Some(from), TieMerge::Average) => Some(SlotMerge {
                into: new,
                from,
                from_weight: 1.0 / (served + 1) as f32,
            }),
            _ => None,
        };
        Ok(TieEffect {
            freed,
            created: None,
            merged,
        })
    }

    /// Make block i independent. Default: if it shares its slot, it gets a new
    /// slot copied from the shared one. Paper-compat: it only becomes
    /// `s[i] = i` and stays on the shared slot (the code's quirk).
    pub fn untie(&mut self, i: usize) -> Result<TieEffect> {
        self.check_layer(i)?;
        self.state[i] = i;
        let old = self.slot_of[i];
        if self.options.paper_compat || self.refcount[old] == 1 {
            return Ok(TieEffect::default());
        }
        let new = self
            .refcount
            .iter()
            .position(|&c| c == 0)
            .expect("a shared slot leaves a free slot number");
        self.slot_of[i] = new;
        self.refcount[new] = 1;
        self.refcount[old] -= 1;
        Ok(TieEffect {
            freed: None,
            created: Some(SlotCopy {
                slot: new,
                from: old,
            }),
            merged: None,
        })
    }

    /// The agent's action for block i: `a < i` ties to a, `a == i` makes it
    /// independent (untie if tied, else keep).
    pub fn apply_action(&mut self, i: usize, a: usize) -> Result<TieEffect> {
        self.check_layer(i)?;
        if a > i {
            bail!("action {a} for block {i} is out of range (0..={i})");
        }
        if a < i {
            self.tie(i, a)
        } else if self.state[i] != i {
            self.untie(i)
        } else {
            Ok(TieEffect::default())
        }
    }

    /// For each action of block i (0..=i), whether `--param-limit` allows it:
    /// it leaves at most `limit` trainable blocks; while the table is above
    /// the limit, it lowers their number (or, where no action of block i
    /// can, it does not raise it).
    pub fn actions_within_limit(&self, i: usize, limit: usize) -> Result<Vec<bool>> {
        self.check_layer(i)?;
        let now = self.trainable_slots().len();
        let after: Vec<usize> = (0..=i)
            .map(|a| {
                let mut t = self.clone();
                t.apply_action(i, a).map(|_| t.trainable_slots().len())
            })
            .collect::<Result<_>>()?;
        if now <= limit {
            return Ok(after.iter().map(|&u| u <= limit).collect());
        }
        let lowers = after.iter().any(|&u| u < now);
        Ok(after
            .iter()
            .map(|&u| if lowers { u < now } else { u <= now })
            .collect())
    }

    /// For each action of block i (0..=i), whether `--agent-moves grow`
    /// allows it: keeping block i where it is, or making it independent (a
    /// copy of the weights it uses). A trained block is never moved onto
    /// another block's weights.
    pub fn actions_that_grow(&self, i: usize) -> Result<Vec<bool>> {
        self.check_layer(i)?;
        Ok((0..=i).map(|a| a == i || a == self.state[i]).collect())
    }

    /// Verify the table's invariants (after reading it from a checkpoint):
    /// a valid state, slot numbers in range, reference counts that match.
    pub fn check(&self) -> Result<()> {
        let n = self.n_layer();
        validate_state(&self.state)?;
        if self.slot_of.len() != n || self.refcount.len() != n {
            bail!(
                "tie table: {n} blocks but {} slot entries and {} counts",
                self.slot_of.len(),
                self.refcount.len()
            );
        }
        for (slot, &count) in self.refcount.iter().enumerate() {
            let used = self.slot_of.iter().filter(|&&s| s == slot).count();
            if used != count {
                bail!("tie table: slot {slot} is used by {used} blocks but counted {count}");
            }
        }
        if let Some(&bad) = self.slot_of.iter().find(|&&s| s >= n) {
            bail!("tie table: slot {bad} is out of range for {n} blocks");
        }
        Ok(())
    }

    fn check_layer(&self, i: usize) -> Result<()> {
        if i == 0 || i >= self.n_layer() {
            bail!(
                "block {i} cannot be tied or untied: valid blocks are 1..{}",
                self.n_layer()
            );
        }
        Ok(())
    }
}

/// A valid state: `s[0] = 0` and `s[i] <= i`.
pub fn validate_state(s: &[usize]) -> Result<()> {
    if s.is_empty() {
        bail!("empty tie state: it needs one entry per block");
    }
    for (i, &j) in s.iter().enumerate() {
        if j > i {
            bail!("tie state entry {i} is {j}: block {i} can only use block 0..={i}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::HostRng;
    use std::collections::BTreeSet;

    fn opts(init: InitTies, paper_compat: bool) -> TieOptions {
        if paper_compat {
            TieOptions {
                init,
                ..TieOptions::paper()
            }
        } else {
            TieOptions {
                init,
                ..TieOptions::default()
            }
        }
    }

    fn check_invariants(t: &TieTable) {
        t.check().unwrap();
        let n = t.n_layer();
        assert_eq!(t.state()[0], 0);
        assert_eq!(t.slot_of(0), t.slots()[0]);
        let referenced: BTreeSet<usize> = t.slots().iter().copied().collect();
        let live: BTreeSet<usize> = t.live_slots().into_iter().collect();
        assert_eq!(referenced, live, "live slots == referenced slots");
        for s in 0..n {
            let count = t.slots().iter().filter(|&&x| x == s).count();
            assert_eq!(t.refcount(s), count, "refcount of slot {s}");
        }
        for i in 0..n {
            assert!(t.state()[i] <= i);
            // Default semantics: an independent block owns its slot.
            if !t.options().paper_compat && t.state()[i] == i {
                assert_eq!(t.owner(t.slot_of(i)), Some(i), "block {i} in {t:?}");
            }
        }
    }

    #[test]
    fn tie_resolves_to_the_slot_at_the_moment_of_the_tie() {
        let mut t = TieTable::new(4, TieOptions::default()).unwrap();
        assert_eq!(t.tie(1, 0).unwrap().freed, Some(1));
        // 2 -> 1 puts 2 on slot 0, where 1 lives.
        assert_eq!(t.tie(2, 1).unwrap().freed, Some(2));
        assert_eq!(t.slots(), &[0, 0, 0, 3]);
        assert_eq!(t.state(), &[0, 0, 1, 3]);
        // Untying 1 copies slot 0 into the lowest free number; 2 stays on 0.
        let e = t.untie(1).unwrap();
        assert_eq!(e.created, Some(SlotCopy { slot: 1, from: 0 }));
        assert_eq!(e.freed, None);
        assert_eq!(t.slots(), &[0, 1, 0, 3]);
        assert_eq!(t.state(), &[0, 1, 1, 3]);
        assert_eq!(t.owner(0), Some(0));
        assert_eq!(t.live_slots(), vec![0, 1, 3]);
        check_invariants(&t);
    }

    #[test]
    fn average_merge_only_when_a_slot_is_freed_weighted_by_its_blocks() {
        let avg = TieOptions {
            merge: TieMerge::Average,
            ..TieOptions::default()
        };
        let mut t = TieTable::new(5, avg).unwrap();
        // Slot 0 served one block: half and half.
        let e = t.tie(1, 0).unwrap();
        let half = SlotMerge {
            into: 0,
            from: 1,
            from_weight: 0.5,
        };
        assert_eq!((e.freed, e.merged), (Some(1), Some(half)));
        // Slot 0 now serves two blocks: the newcomer counts for a third.
        let e = t.tie(2, 1).unwrap();
        assert_eq!(e.merged.map(|m| (m.into, m.from)), Some((0, 2)));
        assert!((e.merged.unwrap().from_weight - 1.0 / 3.0).abs() < 1e-7);
        // Leaving a slot that others keep loses no weights: no merge.
        t.tie(4, 3).unwrap();
        let e = t.tie(3, 0).unwrap();
        assert_eq!(e, TieEffect::default());
        // An untie copies; it never merges.
        assert_eq!(t.untie(1).unwrap().merged, None);
        check_invariants(&t);
        // Replace never merges.
        let mut r = TieTable::new(3, TieOptions::default()).unwrap();
        assert_eq!(r.tie(2, 0).unwrap().merged, None);
    }

    #[test]
    fn the_limit_allows_only_actions_that_keep_or_bring_the_table_within_it() {
        let mut t = TieTable::new(5, TieOptions::default()).unwrap();
        // 5 trainable blocks, limit 3: block 2 must tie (to 0 or 1).
        assert_eq!(t.actions_within_limit(2, 3).unwrap(), [true, true, false]);
        t.tie(2, 0).unwrap();
        t.tie(3, 1).unwrap();
        // 3 trainable (slots 0, 1, 4): block 4 may stay or tie; block 2 may
        // tie anywhere but not become independent again.
        assert_eq!(t.actions_within_limit(4, 3).unwrap(), [true; 5]);
        assert_eq!(t.actions_within_limit(2, 3).unwrap(), [true, true, false]);
        // Block 1 owns slot 1, which block 3 shares: no action of block 1
        // lowers the count, so above the limit any action that does not
        // raise it is allowed.
        let mut u = TieTable::new(4, TieOptions::default()).unwrap();
        u.tie(3, 1).unwrap();
        assert_eq!(u.trainable_slots().len(), 3);
        assert_eq!(u.actions_within_limit(1, 1).unwrap(), [true, true]);
        assert!(u.actions_within_limit(0, 1).is_err());
    }

    #[test]
    fn owner_leaving_keeps_the_slot_alive_for_the_others() {
        let mut t = TieTable::new(4, TieOptions::default()).unwrap();
        t.tie(3, 2).unwrap();
        assert_eq!(t.owner(2), Some(2));
        // 2 leaves slot 2 for slot 0; 3 keeps slot 2 and becomes its owner.
        let e = t.tie(2, 0).unwrap();
        assert_eq!(e, TieEffect::default());
        assert_eq!(t.slots(), &[0, 1, 0, 2]);
        assert_eq!(t.owner(2), Some(3));
        // 3 is alone on its slot: "independent" needs no copy.
        assert!(t.apply_action(3, 3).unwrap().is_noop());
        assert_eq!(t.state(), &[0, 1, 0, 3]);
        check_invariants(&t);
    }

    #[test]
    fn apply_action_keeps_independent_blocks_and_rejects_bad_actions() {
        let mut t = TieTable::new(3, TieOptions::default()).unwrap();
        assert!(t.apply_action(2, 2).unwrap().is_noop());
        assert!(t.apply_action(2, 3).is_err());
        assert!(t.apply_action(0, 0).is_err());
        assert!(t.apply_action(3, 0).is_err());
        assert!(t.tie(1, 1).is_err());
        // Tying to the slot one already uses changes only the state.
        t.tie(2, 0).unwrap();
        assert!(t.tie(2, 0).unwrap().is_noop());
    }

    #[test]
    fn init_zero_default_shares_slot_zero_paper_keeps_own_frozen_slots() {
        let t = TieTable::new(4, opts(InitTies::Zero, false)).unwrap();
        assert_eq!(t.slots(), &[0, 0, 0, 0]);
        assert_eq!(t.live_slots(), vec![0]);
        assert_eq!(t.trainable_slots(), vec![0]);

        let t = TieTable::new(4, opts(InitTies::Zero, true)).unwrap();
        assert_eq!(t.state(), &[0, 0, 0, 0]);
        assert_eq!(t.slots(), &[0, 1, 2, 3]);
        assert_eq!(t.live_slots(), vec![0, 1, 2, 3]);
        // Blocks 1.. are frozen: only slot 0 trains.
        assert_eq!(t.trainable_slots(), vec![0]);
        assert!(!t.receives_grad(3));
    }

    #[test]
    fn paper_untie_leaves_the_alias_in_place() {
        let mut t = TieTable::new(3, opts(InitTies::Independent, true)).unwrap();
        assert_eq!(t.tie(2, 0).unwrap().freed, Some(2));
        assert_eq!(t.trainable_slots(), vec![0, 1]);
        assert!(t.untie(2).unwrap().is_noop());
        assert_eq!(t.state(), &[0, 1, 2]);
        assert_eq!(t.slots(), &[0, 1, 0]);
        // Untied, block 2 sends gradients again, into block 0's slot.
        assert!(t.receives_grad(2));
        check_invariants(&t);
    }

    #[test]
    fn check_catches_a_corrupt_table() {
        let t = TieTable::new(3, TieOptions::default()).unwrap();
        let mut json: serde_json::Value = serde_json::to_value(&t).unwrap();
        json["refcount"] = serde_json::json!([2, 1, 1]);
        let bad: TieTable = serde_json::from_value(json.clone()).unwrap();
        assert!(bad.check().unwrap_err().to_string().contains("slot 0"));
        json["refcount"] = serde_json::json!([1, 1, 1]);
        json["slot_of"] = serde_json::json!([0, 1, 3]);
        let bad: TieTable = serde_json::from_value(json).unwrap();
        assert!(bad.check().is_err());
    }

    #[test]
    fn options_read_both_spellings_and_write_the_flag_one() {
        // A checkpoint's state.json from before the options had one spelling.
        let old = r#"{"init":"Zero","paper_compat":false,"tie_grad":"Frozen"}"#;
        let o: TieOptions = serde_json::from_str(old).unwrap();
        assert_eq!((o.init, o.tie_grad), (InitTies::Zero, TieGrad::Frozen));
        let now = serde_json::to_string(&o).unwrap();
        assert_eq!(
            now,
            r#"{"init":"zero","paper_compat":false,"tie_grad":"frozen","merge":"replace"}"#
        );
        assert_eq!(serde_json::from_str::<TieOptions>(&now).unwrap(), o);
        let e = "both".parse::<TieGrad>().unwrap_err().to_string();
        assert!(
            e.contains("'both'") && e.contains("shared or frozen"),
            "{e}"
        );
    }

    #[test]
    fn from_state_validates() {
        assert!(TieTable::from_state(&[0, 0, 3], TieOptions::default()).is_err());
        assert!(TieTable::from_state(&[], TieOptions::default()).is_err());
        let t = TieTable::from_state(&[0, 0, 1, 3, 3], TieOptions::default()).unwrap();
        assert_eq!(t.slots(), &[0, 0, 0, 3, 3]);
        check_invariants(&t);
    }

    /// Random actions, with a model slot store that applies each effect: the
    /// effects must only free live, unreferenced slots and only create free
    /// ones from live ones, and the store must always match the table.
    #[test]
    fn random_action_sequences_keep_table_and_store_consistent() {
        let mut rng = HostRng::new(12345);
        for case in 0..60 {
            let n = 2 + (case % 7);
            let paper_compat = case % 3 == 2;
            let init = if case % 2 == 0 {
                InitTies::Independent
            } else {
                InitTies::Zero
            };
            let mut t = TieTable::new(n, opts(init, paper_compat)).unwrap();
            let mut store: BTreeSet<usize> = t.live_slots().into_iter().collect();
            for _ in 0..200 {
                let i = 1 + rng.below(n as u64 - 1) as usize;
                let a = rng.below(i as u64 + 1) as usize;
                let e = t.apply_action(i, a).unwrap();
                if let Some(c) = e.created {
                    assert!(store.contains(&c.from), "copy from a live slot");
                    assert!(store.insert(c.slot), "create a free slot");
                }
                if let Some(f) = e.freed {
                    assert!(!t.slots().contains(&f), "freed slot still used");
                    assert!(store.remove(&f), "free a live slot");
                }
                assert_eq!(store, t.live_slots().into_iter().collect());
                check_invariants(&t);
            }
        }
    }
}
