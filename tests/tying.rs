//! Tying inside a model: tied blocks alias one slot, untie copies it, frozen
//! tie gradients count only the owner, and freeing a slot returns exactly
//! its bytes to the backend.

use anyhow::Result;
use dyntie::cpu::CpuBackend;
use dyntie::model::{Arch, Model, ModelConfig};
use dyntie::ops::{Backend, BackendExt};
use dyntie::optim::AdamW;
use dyntie::tying::table::{TieGrad, TieMerge, TieOptions, TieTable};
use std::sync::Arc;

fn cfg() -> ModelConfig {
    ModelConfig {
        arch: Arch::Gpt2,
        n_layer: 3,
        n_embd: 32,
        n_head: 2,
        n_ctx: 8,
        vocab_size: 24,
        dropout: 0.0,
        bias: true,
    }
}

const B: usize = 2;
const T: usize = 8;

fn batch() -> (Vec<u32>, Vec<u32>) {
    let tokens: Vec<u32> = (0..B * T).map(|i| (i * 7 % 24) as u32).collect();
    let targets: Vec<u32> = (0..B * T).map(|i| (i * 5 % 24) as u32).collect();
    (tokens, targets)
}

fn block_names(m: &Model, layer: usize) -> Vec<String> {
    m.block_layout()
        .entries()
        .iter()
        .map(|e| format!("h.{layer}.{}", e.name))
        .collect()
}

/// Copies block `from` of `src` into block `to` of `dst`.
fn copy_block(src: &Model, from: usize, dst: &Model, to: usize) -> Result<()> {
    for (a, b) in block_names(src, from).iter().zip(block_names(dst, to)) {
        dst.write_param(&b, &src.read_param(a)?)?;
    }
    Ok(())
}

fn copy_globals(src: &Model, dst: &Model) -> Result<()> {
    for e in src.global_layout().entries() {
        dst.write_param(e.name, &src.read_param(e.name)?)?;
    }
    Ok(())
}

fn logits(m: &mut Model) -> Result<Vec<f32>> {
    let (tokens, _) = batch();
    m.logits_last(&tokens[..T], T)
}

#[test]
fn a_tied_block_computes_with_the_weights_written_through_its_source() -> Result<()> {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let mut tied = Model::new(be.clone(), cfg(), 3)?;
    tied.tie(2, 1)?;
    // Write new weights through block 1's names only.
    for name in block_names(&tied, 1) {
        let w: Vec<f32> = tied
            .read_param(&name)?
            .iter()
            .map(|x| x * 1.5 + 0.01)
            .collect();
        tied.write_param(&name, &w)?;
    }
    for (a, b) in block_names(&tied, 1).iter().zip(block_names(&tied, 2)) {
        assert_eq!(tied.read_param(a)?, tied.read_param(&b)?, "{b}");
    }
    // An untied model holding those weights in both blocks computes the same.
    let mut reference = Model::new(be, cfg(), 99)?;
    copy_globals(&tied, &reference)?;
    copy_block(&tied, 0, &reference, 0)?;
    copy_block(&tied, 1, &reference, 1)?;
    copy_block(&tied, 1, &reference, 2)?;
    let (a, b) = (logits(&mut tied)?, logits(&mut reference)?);
    assert_eq!(a, b);
    // And they differ from a model whose block 2 kept other weights.
    copy_block(&tied, 0, &reference, 2)?;
    assert_ne!(a, logits(&mut reference)?);
    Ok(())
}

#[test]
fn untie_makes_an_independent_copy() -> Result<()> {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let mut m = Model::new(be.clone(), cfg(), 4)?;
    let mut opt = AdamW::new(be.as_ref(), 1e-2, 0.9, 0.95, 1e-8, 0.0)?;
    let (tokens, targets) = batch();
    // A step while tied gives the slot nonzero AdamW moments to copy.
    m.tie(2, 1)?;
    m.zero_grads()?;
    m.forward_backward(&tokens, &targets, B, T, 1, 1.0)?;
    opt.clip_and_update(&m, None)?;
    m.untie(2)?;
    assert_ne!(m.slots().slot_index(1), m.slots().slot_index(2));
    let names = |l| block_names(&m, l);
    for (a, b) in names(1).iter().zip(names(2)) {
        assert_eq!(m.read_param(a)?, m.read_param(&b)?, "untie copies {a}");
    }
    let (s1, s2) = (m.slots().slot_of(1), m.slots().slot_of(2));
    for (name, a, b) in [("m", &s1.adam_m, &s2.adam_m), ("v", &s1.adam_v, &s2.adam_v)] {
        let (a, b): (Vec<f32>, Vec<f32>) = (be.download(a.view())?, be.download(b.view())?);
        assert!(a.iter().any(|x| *x != 0.0), "AdamW {name} is still zero");
        assert_eq!(a, b, "untie copies AdamW {name}");
    }
    // A step now moves the two blocks apart: they get different gradients
    // and each slot its own update.
    m.zero_grads()?;
    m.forward_backward(&tokens, &targets, B, T, 2, 1.0)?;
    opt.clip_and_update(&m, None)?;
    let fc = |l: usize| m.read_param(&format!("h.{l}.mlp.fc.weight"));
    assert_ne!(fc(1)?, fc(2)?);
    // Writing one leaves the other alone.
    let before = fc(2)?;
    m.write_param("h.1.mlp.fc.weight", &vec![0.5; before.len()])?;
    assert_eq!(fc(2)?, before);
    Ok(())
}

/// With `--tie-grad frozen`, blocks 1 and 2 on one slot give the slot only
/// the gradient block 1 gets in an untied model with the same weights;
/// with `shared` it is the sum of both.
#[test]
fn frozen_tie_grad_counts_only_the_owner() -> Result<()> {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let untied = Model::new(be.clone(), cfg(), 5)?;
    copy_block(&untied, 1, &untied, 2)?;
    let (tokens, targets) = batch();
    let grads = |m: &mut Model, layer: usize| -> Result<Vec<Vec<f32>>> {
        m.zero_grads()?;
        m.forward_backward(&tokens, &targets, B, T, 0, 1.0)?;
        block_names(m, layer)
            .iter()
            .map(|n| m.read_grad(n))
            .collect()
    };
    let mut untied = untied;
    let g1 = grads(&mut untied, 1)?;
    let g2 = grads(&mut untied, 2)?;
    assert_ne!(g1, g2, "the two positions must get different gradients");

    for tie_grad in [TieGrad::Frozen, TieGrad::Shared] {
        let options = TieOptions {
            tie_grad,
            ..TieOptions::default()
        };
        let table = TieTable::from_state(&[0, 1, 1], options)?;
        let mut tied = Model::with_table(be.clone(), cfg(), 6, table)?;
        copy_globals(&untied, &tied)?;
        copy_block(&untied, 0, &tied, 0)?;
        copy_block(&untied, 1, &tied, 1)?;
        let g = grads(&mut tied, 1)?;
        for (k, name) in block_names(&tied, 1).iter().enumerate() {
            let want: Vec<f32> = match tie_grad {
                TieGrad::Frozen => g1[k].clone(),
                TieGrad::Shared => g1[k].iter().zip(&g2[k]).map(|(a, b)| a + b).collect(),
            };
            for (x, y) in g[k].iter().zip(&want) {
                assert!(
                    (x - y).abs() <= 1e-5 + 1e-4 * y.abs(),
                    "{tie_grad:?} {name}: {x} vs {y}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn ties_free_exactly_one_slot_and_untie_allocates_it_again() -> Result<()> {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let mut m = Model::new(be.clone(), cfg(), 7)?;
    let slot_bytes = m.slots().slot_of(0).bytes() as u64;
    assert_eq!(slot_bytes, 16 * cfg().block_params() as u64);
    let live = || be.mem_stats().live_bytes;
    let check = |m: &Model, n: usize| {
        m.slots().check().unwrap();
        assert_eq!(m.slots().live_slots().count(), n);
        assert_eq!(m.slots().table().live_slots().len(), n);
    };
    let start = live();
    check(&m, 3);
    m.tie(1, 0)?;
    assert_eq!(live(), start - slot_bytes);
    check(&m, 2);
    // Block 2 onto block 1 resolves to slot 0: another slot goes.
    m.tie(2, 1)?;
    assert_eq!(live(), start - 2 * slot_bytes);
    check(&m, 1);
    // Tying to where it already is changes nothing.
    m.tie(2, 0)?;
    assert_eq!(live(), start - 2 * slot_bytes);
    m.untie(1)?;
    assert_eq!(live(), start - slot_bytes);
    check(&m, 2);
    m.untie(2)?;
    assert_eq!(live(), start);
    check(&m, 3);
    Ok(())
}

/// `--tie-merge average`: a tie that frees block 2's slot folds it into the
/// shared one, weights and AdamW moments, weighted by the blocks each slot
/// served; `replace` keeps the shared slot as it was.
#[test]
fn merge_on_tie_averages_weights_and_moments() -> Result<()> {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let (tokens, targets) = batch();
    let slot_state = |m: &Model, layer: usize| -> Result<Vec<Vec<f32>>> {
        let s = m.slots().slot_of(layer);
        [&s.params, &s.adam_m, &s.adam_v]
            .iter()
            .map(|b| be.download(b.view()))
            .collect()
    };
    for merge in [TieMerge::Average, TieMerge::Replace] {
        let options = TieOptions {
            merge,
            ..TieOptions::default()
        };
        let table = TieTable::new(3, options)?;
        let mut m = Model::with_table(be.clone(), cfg(), 5, table)?;
        let mut opt = AdamW::new(be.as_ref(), 1e-2, 0.9, 0.95, 1e-8, 0.0)?;
        m.zero_grads()?;
        m.forward_backward(&tokens, &targets, B, T, 1, 1.0)?;
        opt.clip_and_update(&m, None)?;
        let (one, two) = (slot_state(&m, 1)?, slot_state(&m, 2)?);
        assert!(one[1].iter().any(|x| *x != 0.0), "moments are still zero");
        // Slot 1 serves one block, so the two count half each.
        m.tie(2, 1)?;
        let merged = slot_state(&m, 2)?;
        assert_eq!(merged, slot_state(&m, 1)?, "blocks 1 and 2 share a slot");
        for k in 0..3 {
            for ((x, a), b) in merged[k].iter().zip(&one[k]).zip(&two[k]) {
                let want = match merge {
                    TieMerge::Average => 0.5 * a + 0.5 * b,
                    TieMerge::Replace => *a,
                };
                assert_eq!(*x, want, "tensor {k} with {merge:?}");
            }
        }
        // Now block 0's slot (serving one block) takes the shared slot, which
        // served two: that one counts for two thirds.
        let zero = slot_state(&m, 0)?;
        m.tie(1, 0)?;
        // Block 2 still uses slot 1, so nothing is freed or merged.
        assert_eq!(slot_state(&m, 0)?, zero);
        m.tie(2, 0)?;
        let all = slot_state(&m, 0)?;
        for ((x, a), b) in all[0].iter().zip(&zero[0]).zip(&merged[0]) {
            let want = match merge {
                TieMerge::Average => (1.0 - 1.0 / 3.0f32) * a + (1.0 / 3.0) * b,
                TieMerge::Replace => *a,
            };
            assert_eq!(*x, want);
        }
        m.slots().check()?;
    }
    Ok(())
}

/// Moving a model to a tie state with one action per block realises the
/// state's partition of blocks into slots, from any starting table.
#[test]
fn set_tie_state_reaches_the_target_partition() -> Result<()> {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let mut c = cfg();
    c.n_layer = 6;
    let partition = |slots: &[usize]| -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = vec![];
        for (i, &s) in slots.iter().enumerate() {
            match slots[..i].iter().position(|&t| t == s) {
                Some(first) => groups.iter_mut().find(|g| g[0] == first).unwrap().push(i),
                None => groups.push(vec![i]),
            }
        }
        groups
    };
    for start in [vec![0, 1, 2, 3, 4, 5], vec![0; 6], vec![0, 0, 2, 0, 4, 2]] {
        for target in [
            vec![0, 0, 0, 0, 4, 4],
            vec![0, 1, 2, 0, 1, 2],
            vec![0, 1, 2, 3, 4, 5],
        ] {
            let table = TieTable::from_state(&start, TieOptions::default())?;
            let mut m = Model::with_table(be.clone(), c.clone(), 3, table)?;
            m.set_tie_state(&target)?;
            let got = m.slots().table();
            let want = TieTable::from_state(&target, TieOptions::default())?;
            assert_eq!(got.state(), &target[..]);
            assert_eq!(
                partition(got.slots()),
                partition(want.slots()),
                "{start:?} -> {target:?}"
            );
            m.slots().check()?;
        }
    }
    Ok(())
}
