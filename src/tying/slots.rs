//! The slot store: which buffer holds each layer's weights.
//!
//! A [`Slot`] is one block's parameters in one contiguous buffer (offsets in
//! [`crate::model::BlockLayout`]) with its gradients and AdamW moments. Layer
//! `i` reads and writes slot `layer_slot[i]`; several layers may share one
//! slot, and then their gradients add up in the slot's gradient buffer.

use crate::backend::{Backend, Buffer};
use anyhow::{ensure, Result};

/// Parameters, gradients and AdamW moments of equal length.
#[derive(Debug)]
pub struct Slot {
    pub params: Buffer,
    pub grads: Buffer,
    pub adam_m: Buffer,
    pub adam_v: Buffer,
}

impl Slot {
    /// A zero-filled slot of `len` parameters.
    pub fn zeros(backend: &dyn Backend, len: usize) -> Result<Slot> {
        Ok(Slot {
            params: backend.alloc_f32(len)?,
            grads: backend.alloc_f32(len)?,
            adam_m: backend.alloc_f32(len)?,
            adam_v: backend.alloc_f32(len)?,
        })
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.f32().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
pub struct SlotStore {
    /// `None` marks a freed slot (its index may be reused).
    pub slots: Vec<Option<Slot>>,
    /// Layer -> index into `slots`.
    pub layer_slot: Vec<usize>,
}

impl SlotStore {
    /// Every layer on its own zero-filled slot of `block_len` parameters.
    pub fn independent(backend: &dyn Backend, n_layer: usize, block_len: usize) -> Result<Self> {
        let slots = (0..n_layer)
            .map(|_| Slot::zeros(backend, block_len).map(Some))
            .collect::<Result<Vec<_>>>()?;
        Ok(SlotStore {
            slots,
            layer_slot: (0..n_layer).collect(),
        })
    }

    pub fn n_layer(&self) -> usize {
        self.layer_slot.len()
    }

    pub fn slot_index(&self, layer: usize) -> usize {
        self.layer_slot[layer]
    }

    /// The slot layer `layer` uses. The store keeps every referenced slot
    /// live, so a missing one is a bug.
    pub fn slot_of(&self, layer: usize) -> &Slot {
        self.slots[self.layer_slot[layer]]
            .as_ref()
            .unwrap_or_else(|| panic!("layer {layer} points at a freed slot"))
    }

    /// The live slots with their indices, each once.
    pub fn live_slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// Whether layer `layer` contributes weight gradients. Always true for
    /// now: every layer on a slot trains it ("shared" tie gradients).
    pub fn grad_enabled(&self, _layer: usize) -> bool {
        true
    }

    /// Checks that every layer points at a live slot.
    pub fn check(&self) -> Result<()> {
        for (layer, &s) in self.layer_slot.iter().enumerate() {
            ensure!(
                self.slots.get(s).is_some_and(|s| s.is_some()),
                "layer {layer} points at slot {s}, which is not live"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn independent_store_gives_each_layer_a_slot_and_frees_memory_on_drop() {
        let be = CpuBackend::new();
        let mut store = SlotStore::independent(&be, 3, 10).unwrap();
        assert_eq!(store.live_slots().count(), 3);
        assert_eq!(store.slot_index(2), 2);
        assert_eq!(store.slot_of(1).len(), 10);
        assert!(store.check().is_ok());
        let before = be.mem_stats().live_bytes;
        store.layer_slot[2] = 0;
        store.slots[2] = None;
        assert_eq!(before - be.mem_stats().live_bytes, 4 * 10 * 4);
        assert_eq!(
            store.live_slots().map(|(i, _)| i).collect::<Vec<_>>(),
            [0, 1]
        );
        assert!(store.check().is_ok());
        store.layer_slot[1] = 2;
        assert!(store.check().is_err());
    }
}
