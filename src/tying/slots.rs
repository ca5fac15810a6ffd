//! The slot store: which buffer holds each layer's weights.
//!
//! A [`Slot`] is one block's parameters in one contiguous buffer (offsets in
//! [`crate::model::BlockLayout`]) with its gradients and AdamW moments. The
//! store owns the [`TieTable`] and keeps exactly the slots it references
//! alive: a tie that leaves a slot without layers drops its four buffers at
//! once (that is where the memory saving comes from); an untie allocates a
//! new slot as a copy of the old one's weights and moments (and a tie under
//! `--tie-merge average` first folds the freed slot into the shared one).
//! Several layers on
//! one slot add their gradients into its gradient buffer (`--tie-grad
//! shared`), or only the owner does (`frozen`, see [`SlotStore::grad_enabled`]).
//!
//! In mixed precision (`--precision bf16`, see `crate::precision`) each slot
//! also holds a bf16 *compute copy* of its fp32 weights, which the forward
//! and backward read; layers tied to a slot read its one copy.

use crate::mem::{Buffer, DType, View};
use crate::ops::elementwise::{Cast, CopyView};
use crate::ops::{Backend, BackendExt};
use crate::tying::table::{TieEffect, TieOptions, TieTable};
use anyhow::{ensure, Result};

/// Parameters, gradients and AdamW moments of equal length, all fp32, and
/// in mixed precision the bf16 compute copy of the parameters.
#[derive(Debug)]
pub struct Slot {
    pub params: Buffer,
    pub grads: Buffer,
    pub adam_m: Buffer,
    pub adam_v: Buffer,
    /// `params` rounded to bf16 (mixed precision only): what the ops read.
    /// The AdamW step rewrites it with the weights it writes.
    pub compute: Option<Buffer>,
}

impl Slot {
    /// A zero-filled slot of `len` parameters.
    pub fn zeros(backend: &dyn Backend, len: usize) -> Result<Slot> {
        Ok(Slot {
            params: backend.alloc(DType::F32, len)?,
            grads: backend.alloc(DType::F32, len)?,
            adam_m: backend.alloc(DType::F32, len)?,
            adam_v: backend.alloc(DType::F32, len)?,
            compute: None,
        })
    }

    /// The weights the ops read: the compute copy, or the fp32 parameters.
    pub fn weights(&self) -> View {
        self.compute.as_ref().unwrap_or(&self.params).view()
    }

    /// Allocates (`Some(BF16)`) or drops (`None`) the compute copy; a new
    /// copy is filled from the parameters.
    pub fn set_compute_copy(&mut self, backend: &dyn Backend, dtype: Option<DType>) -> Result<()> {
        self.compute = match dtype {
            None | Some(DType::F32) => None,
            Some(d) => Some(backend.alloc(d, self.len())?),
        };
        self.refresh_compute_copy(backend, 0, self.len())
    }

    /// Rounds parameters `[offset, offset + len)` into the compute copy
    /// (after anything but the AdamW step wrote them: init, a checkpoint).
    pub fn refresh_compute_copy(
        &self,
        backend: &dyn Backend,
        offset: usize,
        len: usize,
    ) -> Result<()> {
        if let Some(copy) = &self.compute {
            backend.run(Cast {
                dst: copy.view().slice(offset, len),
                src: self.params.view().slice(offset, len),
            })?;
        }
        Ok(())
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the buffers (the four fp32 ones and the compute copy).
    pub fn bytes(&self) -> usize {
        4 * self.params.bytes() + self.compute.as_ref().map_or(0, |c| c.bytes())
    }
}

#[derive(Debug)]
pub struct SlotStore {
    /// `None` marks a free slot number.
    slots: Vec<Option<Slot>>,
    table: TieTable,
    block_len: usize,
    /// The dtype of each slot's compute copy; `None` in fp32.
    compute: Option<DType>,
}

impl SlotStore {
    /// The slots `table` references, zero-filled.
    pub fn new(backend: &dyn Backend, table: TieTable, block_len: usize) -> Result<Self> {
        let mut slots: Vec<Option<Slot>> = (0..table.n_layer()).map(|_| None).collect();
        for s in table.live_slots() {
            slots[s] = Some(Slot::zeros(backend, block_len)?);
        }
        Ok(SlotStore {
            slots,
            table,
            block_len,
            compute: None,
        })
    }

    /// Every layer on its own zero-filled slot.
    pub fn independent(backend: &dyn Backend, n_layer: usize, block_len: usize) -> Result<Self> {
        Self::new(
            backend,
            TieTable::new(n_layer, TieOptions::default())?,
            block_len,
        )
    }

    pub fn table(&self) -> &TieTable {
        &self.table
    }

    pub fn n_layer(&self) -> usize {
        self.table.n_layer()
    }

    pub fn slot_index(&self, layer: usize) -> usize {
        self.table.slot_of(layer)
    }

    /// The slot layer `layer` uses. The store keeps every referenced slot
    /// live, so a missing one is a bug.
    pub fn slot_of(&self, layer: usize) -> &Slot {
        let s = self.table.slot_of(layer);
        self.slots[s]
            .as_ref()
            .unwrap_or_else(|| panic!("layer {layer} points at freed slot {s}"))
    }

    /// The live slots with their numbers, each once.
    pub fn live_slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// The live slots that receive gradients (the ones AdamW steps), each once.
    pub fn trainable_slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        let trainable = self.table.trainable_slots();
        self.live_slots()
            .filter(move |(i, _)| trainable.contains(i))
    }

    /// Whether layer `layer` contributes weight gradients: always with shared
    /// tie gradients; with frozen ones only a layer that is its slot's owner
    /// and independent.
    pub fn grad_enabled(&self, layer: usize) -> bool {
        self.table.receives_grad(layer)
    }

    /// Gives every live slot, and every slot created later, a compute copy
    /// of `dtype` (`None` or `F32`: none).
    pub fn set_compute_copies(
        &mut self,
        backend: &dyn Backend,
        dtype: Option<DType>,
    ) -> Result<()> {
        let dtype = dtype.filter(|&d| d != DType::F32);
        for slot in self.slots.iter_mut().flatten() {
            slot.set_compute_copy(backend, dtype)?;
        }
        self.compute = dtype;
        Ok(())
    }

    /// Applies the agent's action `a` for block `i` (see
    /// [`TieTable::apply_action`]) to the table and the buffers.
    pub fn apply_action(&mut self, backend: &dyn Backend, i: usize, a: usize) -> Result<TieEffect> {
        let mut table = self.table.clone();
        let effect = table.apply_action(i, a)?;
        self.commit(backend, table, effect)?;
        Ok(effect)
    }

    /// Moves the table to state `target` with one action per block, in
    /// block order (so each tie resolves to the target's slot), and returns
    /// the effects.
    pub fn set_state(&mut self, backend: &dyn Backend, target: &[usize]) -> Result<Vec<TieEffect>> {
        ensure!(
            target.len() == self.n_layer(),
            "a tie state of {} entries for {} blocks",
            target.len(),
            self.n_layer()
        );
        crate::tying::table::validate_state(target)?;
        (1..target.len())
            .map(|i| self.apply_action(backend, i, target[i]))
            .collect()
    }

    /// Ties block `i` to block `j`'s slot.
    pub fn tie(&mut self, backend: &dyn Backend, i: usize, j: usize) -> Result<TieEffect> {
        let mut table = self.table.clone();
        let effect = table.tie(i, j)?;
        self.commit(backend, table, effect)?;
        Ok(effect)
    }

    /// Gives block `i` its own slot again.
    pub fn untie(&mut self, backend: &dyn Backend, i: usize) -> Result<TieEffect> {
        let mut table = self.table.clone();
        let effect = table.untie(i)?;
        self.commit(backend, table, effect)?;
        Ok(effect)
    }

    /// Makes the buffers match `table`; the table only changes once the
    /// allocation succeeded, so an out-of-memory error leaves the store as it was.
    fn commit(&mut self, backend: &dyn Backend, table: TieTable, effect: TieEffect) -> Result<()> {
        if let Some(c) = effect.created {
            let mut fresh = Slot::zeros(backend, self.block_len)?;
            if let Some(d) = self.compute {
                fresh.compute = Some(backend.alloc(d, self.block_len)?);
            }
            let src = self.slots[c.from]
                .as_ref()
                .expect("the table copies from a live slot");
            let copies = fresh.compute.as_ref().zip(src.compute.as_ref());
            for (dst, src) in [
                (&fresh.params, &src.params),
                (&fresh.adam_m, &src.adam_m),
                (&fresh.adam_v, &src.adam_v),
            ]
            .into_iter()
            .chain(copies)
            {
                backend.run(CopyView {
                    dst: dst.view(),
                    src: src.view(),
                })?;
            }
            self.slots[c.slot] = Some(fresh);
        }
        if let Some(m) = effect.merged {
            let slot = |k: usize| {
                self.slots[k]
                    .as_ref()
                    .expect("a merge joins two live slots")
            };
            let (into, from) = (slot(m.into), slot(m.from));
            // On the host: a merge happens at most once per agent decision.
            for (dst, src) in [
                (&into.params, &from.params),
                (&into.adam_m, &from.adam_m),
                (&into.adam_v, &from.adam_v),
            ] {
                let mut a: Vec<f32> = backend.download(dst.view())?;
                let b: Vec<f32> = backend.download(src.view())?;
                let w = m.from_weight;
                for (x, y) in a.iter_mut().zip(&b) {
                    *x = (1.0 - w) * *x + w * y;
                }
                backend.upload(dst.view(), &a)?;
            }
        }
        if let Some(f) = effect.freed {
            self.slots[f] = None;
        }
        self.table = table;
        debug_assert!(self.check().is_ok());
        Ok(())
    }

    /// Checks that the live buffers are exactly the slots the table references.
    pub fn check(&self) -> Result<()> {
        let want = self.table.live_slots();
        let have: Vec<usize> = self.live_slots().map(|(i, _)| i).collect();
        ensure!(
            want == have,
            "slot store holds slots {have:?} but the tie table references {want:?}"
        );
        Ok(())
    }

    /// Bytes held by all live slots.
    pub fn live_bytes(&self) -> usize {
        self.live_slots().map(|(_, s)| s.bytes()).sum()
    }
}
