//! The language model over slots: embeddings, the blocks (each reading its
//! weights from the slot the tie table gives its layer, see [`SlotStore`]),
//! and the loss head; its parameters by name, its initialization, and the
//! forward and backward passes over one activation arena.
//!
//! GPT-2: pre-LayerNorm blocks (`block.rs`), GELU, learned positions, the
//! output head tied to wte (`head.rs`). Before the blocks
//! `x = drop(wte[tok] + wpe[t])`, after them `logits = ln_f(x) @ wte^T`.
//! Dropout sits on the embeddings, on both residual branches and on the
//! attention probabilities, as in GPT-2 (one probability, `cfg.dropout`, for
//! all four, so the Hugging Face export's `attn_pdrop`, `resid_pdrop` and
//! `embd_pdrop` are the value trained with). Dropout site `k` (0 =
//! embeddings, then two per block) draws mask elements at counter offset
//! `k * B*T*C` of the step's Philox stream, so the masks of different sites
//! differ; block `i`'s attention dropout draws from the separate attention
//! stream of the same seed at head offset `i * B * heads`
//! ([`crate::rng::attention_dropout_words`]).
//!
//! Gradients of the residual stream: every block reads and writes the stream,
//! and its gradient is one buffer (`g_resid`) for all layers. A residual
//! add `out = x + branch` then needs no backward of its own: `out`, `x` and
//! `branch` all share that buffer, and the ops that read the stream (the
//! LayerNorms) accumulate into it after the branch has consumed it.

use super::block::{AttentionPath, BlockParams, BlockRun, DropoutSite, Linear, Norm};
use super::head::Head;
use super::plan::{ActivationPlan, Region};
use super::{Arch, BlockLayout, GlobalLayout, ModelConfig};
use crate::autograd::{self, Param, Tape, Var};
use crate::mem::{Buffer, DType, View};
use crate::ops::attention::{AttnDropout, AttnShape};
use crate::ops::elementwise::Fill;
use crate::ops::optimizer::{SumScaled, SumTarget};
use crate::ops::{Backend, BackendExt};
use crate::precision::Precision;
use crate::rng::HostRng;
use crate::tying::slots::{Slot, SlotStore};
use crate::tying::table::{TieEffect, TieOptions, TieTable};
use anyhow::{bail, ensure, Context, Result};
use std::sync::Arc;

pub use super::head::IGNORE_INDEX;

/// Label of the initialization stream derived from the model seed.
const INIT_STREAM: u64 = 0x494e_4954; // "INIT"

/// Both arenas for one (batch, seq).
struct Arena {
    plan: ActivationPlan,
    acts: Buffer,
    grads: Buffer,
}

pub struct Model {
    backend: Arc<dyn Backend>,
    cfg: ModelConfig,
    block: BlockLayout,
    global: GlobalLayout,
    globals: Slot,
    slots: SlotStore,
    /// `C` zeros standing in for LayerNorm biases when `cfg.bias` is false
    /// (the backend's LayerNorm always adds a bias).
    zero_bias: Option<Buffer>,
    arena: Option<Arena>,
    /// Recompute each block's activations in backward (see `plan.rs`).
    recompute: bool,
    /// fp32, or bf16 activations and compute copies of the weights (see
    /// `crate::precision`).
    precision: Precision,
    tape: Tape,
    /// Called in the backward pass with each trainable slot's gradient as
    /// soon as it is complete ([`Model::set_grad_ready`]).
    grad_ready: Option<GradReady>,
}

/// What [`Model::set_grad_ready`] calls with a complete slot gradient.
pub type GradReady = Arc<dyn Fn(&dyn Backend, View) -> Result<()> + Send + Sync>;

/// What a forward pass is for.
#[derive(Clone, Copy)]
enum Mode {
    Train { dropout_seed: u64, grad_scale: f32 },
    Eval,
}

impl Model {
    /// A model with every block on its own slot, initialized from `seed`
    /// (see [`Model::init`]).
    pub fn new(backend: Arc<dyn Backend>, cfg: ModelConfig, seed: u64) -> Result<Self> {
        let table = TieTable::new(cfg.n_layer.max(1), TieOptions::default())?;
        Self::with_table(backend, cfg, seed, table)
    }

    /// A model whose blocks sit on the slots of `table` (only the live slots
    /// are allocated), initialized from `seed` (see [`Model::init`]).
    pub fn with_table(
        backend: Arc<dyn Backend>,
        cfg: ModelConfig,
        seed: u64,
        table: TieTable,
    ) -> Result<Self> {
        cfg.validate()?;
        ensure!(
            table.n_layer() == cfg.n_layer,
            "the tie table has {} blocks but the model {}",
            table.n_layer(),
            cfg.n_layer
        );
        let block = BlockLayout::new(&cfg);
        let global = GlobalLayout::new(&cfg);
        let globals = Slot::zeros(backend.as_ref(), global.len())?;
        let slots = SlotStore::new(backend.as_ref(), table, block.len())?;
        let zero_bias = if cfg.bias {
            None
        } else {
            Some(backend.alloc(DType::F32, cfg.n_embd)?)
        };
        let model = Model {
            backend,
            cfg,
            block,
            global,
            globals,
            slots,
            zero_bias,
            arena: None,
            recompute: false,
            precision: Precision::Fp32,
            tape: Tape::new(),
            grad_ready: None,
        };
        model.init(seed)?;
        Ok(model)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Keep only each block's output through the forward pass and recompute
    /// the rest of a block's activations in its backward (activation
    /// checkpointing): far less activation memory for one more forward pass
    /// of the blocks. The gradients are the same, bit for bit, on a
    /// deterministic backend. Takes effect at the next forward pass.
    pub fn set_recompute(&mut self, on: bool) {
        self.recompute = on;
    }

    pub fn recompute(&self) -> bool {
        self.recompute
    }

    /// Switches the numeric precision (the model starts in fp32): in bf16
    /// every live slot and the globals get a bf16 compute copy of their
    /// fp32 weights, rounded from them now, and activations become bf16.
    /// The fp32 weights, moments and gradients are untouched, so a model can
    /// switch back and forth.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        let be = self.backend.as_ref();
        let copy = precision
            .has_compute_copy()
            .then(|| precision.compute_dtype());
        self.globals.set_compute_copy(be, copy)?;
        self.slots.set_compute_copies(be, copy)?;
        if !self.cfg.bias {
            self.zero_bias = Some(be.alloc(precision.compute_dtype(), self.cfg.n_embd)?);
        }
        self.precision = precision;
        self.arena = None;
        Ok(())
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The attention the blocks run, chosen from the precision (see
    /// [`AttentionPath::choose`]).
    pub fn attention(&self) -> AttentionPath {
        AttentionPath::choose(self.precision, &self.cfg)
    }

    /// Rounds the fp32 weights of the globals and of every live slot into
    /// their compute copies (after writing the weights other than through
    /// the optimizer, e.g. loading a checkpoint). Nothing to do in fp32.
    pub fn refresh_compute_copies(&self) -> Result<()> {
        let be = self.backend.as_ref();
        for slot in std::iter::once(&self.globals).chain(self.slots.live_slots().map(|(_, s)| s)) {
            slot.refresh_compute_copy(be, 0, slot.len())?;
        }
        Ok(())
    }
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    pub fn block_layout(&self) -> &BlockLayout {
        &self.block
    }
    pub fn global_layout(&self) -> &GlobalLayout {
        &self.global
    }
    /// Embeddings and final LayerNorm, with their gradients and moments.
    pub fn globals(&self) -> &Slot {
        &self.globals
    }
    pub fn slots(&self) -> &SlotStore {
        &self.slots
    }
    /// Applies the agent's action `a` for block `i` to the tie table and
    /// the slot buffers (see [`SlotStore::apply_action`]).
    pub fn apply_action(&mut self, i: usize, a: usize) -> Result<TieEffect> {
        self.slots.apply_action(self.backend.as_ref(), i, a)
    }

    /// Moves the tie table to state `target` (see [`SlotStore::set_state`]).
    pub fn set_tie_state(&mut self, target: &[usize]) -> Result<Vec<TieEffect>> {
        self.slots.set_state(self.backend.as_ref(), target)
    }

    /// Ties block `i` to block `j`'s slot.
    pub fn tie(&mut self, i: usize, j: usize) -> Result<TieEffect> {
        self.slots.tie(self.backend.as_ref(), i, j)
    }

    /// Gives block `i` its own copy of its slot.
    pub fn untie(&mut self, i: usize) -> Result<TieEffect> {
        self.slots.untie(self.backend.as_ref(), i)
    }

    /// Initializes every parameter on the host from one stream derived from
    /// `seed`, in this order: the global buffer, then the slot of layer 0,
    /// 1, ..., each in layout order (a layer that does not own its slot
    /// draws its values too, and drops them, so a tie pattern never changes
    /// what the other slots get). Matrices and embeddings are N(0, 0.02)
    /// (the initializer range of both GPT-2 and BERT); in GPT-2 the residual
    /// output projections (attn.proj.weight, mlp.proj.weight) are
    /// N(0, 0.02 / sqrt(2 n_layer)); biases 0; LayerNorm weights (the only
    /// one-dimensional weights) 1. Only the normal draws consume the stream.
    pub fn init(&self, seed: u64) -> Result<()> {
        let mut rng = HostRng::derive(seed, INIT_STREAM);
        let proj_std = match self.cfg.arch {
            Arch::Gpt2 => 0.02 / (2.0 * self.cfg.n_layer as f64).sqrt(),
            Arch::Bert => 0.02,
        };
        let mut fill = |entries: &[super::ParamEntry], len: usize| {
            let mut host = vec![0f32; len];
            for e in entries {
                // Padding rows (after the used elements) stay zero.
                let dst = &mut host[e.offset..e.offset + e.numel()];
                let std = match e.name {
                    "attn.proj.weight" | "mlp.proj.weight" => proj_std,
                    n if n.ends_with("weight") && e.shape.len() == 1 => {
                        dst.fill(1.0);
                        continue;
                    }
                    n if n.ends_with("bias") => continue,
                    _ => 0.02,
                };
                for x in dst {
                    *x = (rng.normal() * std) as f32;
                }
            }
            host
        };
        let host = fill(self.global.entries(), self.global.len());
        self.backend.upload(self.globals.params.view(), &host)?;
        let table = self.slots.table();
        for layer in 0..self.cfg.n_layer {
            let host = fill(self.block.entries(), self.block.len());
            if table.owner(table.slot_of(layer)) == Some(layer) {
                self.backend
                    .upload(self.slots.slot_of(layer).params.view(), &host)?;
            }
        }
        self.refresh_compute_copies()
    }

    /// The gradients that data-parallel replicas sum before the optimizer
    /// step: the globals' and each trainable slot's, in slot order (the same
    /// order on every replica that holds the same tie table). A tie removes
    /// a slot from this list, so it shrinks the all-reduce as well.
    pub fn gradients_to_reduce(&self) -> Vec<View> {
        std::iter::once(&self.globals)
            .chain(self.slots.trainable_slots().map(|(_, s)| s))
            .map(|s| s.grads.view())
            .collect()
    }

    /// From the next training pass on, calls `hook` in the backward pass
    /// with the gradient of each trainable slot as soon as no block is left
    /// to add to it: right after the backward of the lowest block on the
    /// slot, so the last blocks' slots come first. Data-parallel replicas
    /// start summing a slot over the replicas there, while the backward
    /// pass goes on. The globals' gradient is complete only at the end of
    /// the pass and is not handed over. `None` stops it (the hook is kept
    /// until then, with whatever it holds).
    pub fn set_grad_ready(&mut self, hook: Option<GradReady>) {
        self.grad_ready = hook;
    }

    /// The gradient of block `layer`'s slot if the backward of `layer`
    /// completes it: the block sends its slot a gradient and no earlier
    /// block does.
    fn slot_completed_by(&self, layer: usize) -> Option<View> {
        let slot = self.slots.slot_index(layer);
        let earlier =
            (0..layer).any(|j| self.slots.slot_index(j) == slot && self.slots.grad_enabled(j));
        (self.slots.grad_enabled(layer) && !earlier).then(|| self.slots.slot_of(layer).grads.view())
    }

    /// Zeroes the gradients of the globals and of every live slot.
    pub fn zero_grads(&self) -> Result<()> {
        for grads in std::iter::once(&self.globals).chain(self.slots.live_slots().map(|(_, s)| s)) {
            self.backend.run(Fill {
                dst: grads.grads.view(),
                value: 0.0,
            })?;
        }
        Ok(())
    }

    /// One forward and backward pass on `batch` rows of `seq` tokens.
    /// Accumulates `grad_scale` times the gradient of the mean loss into the
    /// parameter gradients (zero them with [`Model::zero_grads`] before the
    /// first micro-batch) and returns the mean loss over the targets that are
    /// not [`IGNORE_INDEX`].
    pub fn forward_backward(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
        dropout_seed: u64,
        grad_scale: f32,
    ) -> Result<f32> {
        let count = self.train_pass(tokens, targets, batch, seq, dropout_seed, grad_scale)?;
        let (sum, _) = self.sum_losses(targets)?;
        Ok((sum / count as f64) as f32)
    }

    /// [`Model::forward_backward`] that reads nothing back: `grad_scale`
    /// times the mean loss is added to `loss_sum.acc` (one fp32 on the
    /// device) instead of being returned.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_on_device(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
        dropout_seed: u64,
        grad_scale: f32,
        loss_sum: SumTarget,
    ) -> Result<()> {
        let count = self.train_pass(tokens, targets, batch, seq, dropout_seed, grad_scale)?;
        let arena = self.arena.as_ref().expect("forward planned the arena");
        // Ignored targets have a loss of 0, so the plain sum is the sum
        // over the counted ones.
        self.backend.run(SumScaled {
            acc: loss_sum.acc,
            scratch: loss_sum.scratch,
            x: arena.plan.losses.view(arena.acts.view()),
            scale: grad_scale / count as f32,
        })
    }

    /// The forward and backward pass of both; returns how many targets
    /// count.
    fn train_pass(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
        dropout_seed: u64,
        grad_scale: f32,
    ) -> Result<usize> {
        let count = self.check_targets(targets, batch, seq)?;
        if count == 0 {
            bail!("every target of this batch is the ignore index; there is no loss to train on");
        }
        let mode = Mode::Train {
            dropout_seed,
            grad_scale: grad_scale / count as f32,
        };
        self.forward(tokens, Some(targets), batch, seq, mode)?;
        let mut tape = std::mem::take(&mut self.tape);
        let result = tape.backward(self.backend.as_ref());
        self.tape = tape;
        result?;
        Ok(count)
    }

    /// The summed loss and the number of non-ignored targets, with no dropout
    /// and no gradients.
    pub fn eval_loss(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<(f64, usize)> {
        self.check_targets(targets, batch, seq)?;
        self.forward(tokens, Some(targets), batch, seq, Mode::Eval)?;
        self.sum_losses(targets)
    }

    /// The logits of the last position of each of the `tokens.len() / seq`
    /// rows, `vocab_size` per row (for sampling).
    pub fn logits_last(&mut self, tokens: &[u32], seq: usize) -> Result<Vec<f32>> {
        ensure!(
            seq > 0 && tokens.len().is_multiple_of(seq) && !tokens.is_empty(),
            "logits_last: {} tokens do not split into rows of {seq}",
            tokens.len()
        );
        let batch = tokens.len() / seq;
        self.forward(tokens, None, batch, seq, Mode::Eval)?;
        let arena = self.arena.as_ref().expect("forward planned the arena");
        let logits = arena.plan.logits.view(arena.acts.view());
        let (v, stride) = (self.cfg.vocab_size, self.cfg.padded_vocab());
        let mut out = Vec::with_capacity(batch * v);
        for b in 0..batch {
            let last = b * seq + seq - 1;
            if arena.plan.recompute {
                // The chunked head computed nothing without targets: the
                // last row's logits alone, into the chunk buffer.
                let c = self.cfg.n_embd;
                let x = arena.plan.lnf.view(arena.acts.view()).slice(last * c, c);
                let row = Var { val: x, grad: x };
                self.head(row, 1)
                    .decode(self.backend.as_ref(), logits.slice(0, stride))?;
                out.extend(download_f32(self.backend.as_ref(), logits.slice(0, v))?);
            } else {
                out.extend(download_f32(
                    self.backend.as_ref(),
                    logits.slice(last * stride, v),
                )?);
            }
        }
        Ok(out)
    }

    /// The full logits `[batch * seq, vocab]` of the last forward pass
    /// (after a training step they hold the logits' gradient instead).
    pub fn last_logits(&self) -> Result<Vec<f32>> {
        let arena = self.arena.as_ref().context("no forward pass has run yet")?;
        ensure!(
            !arena.plan.recompute,
            "the full logits are not kept with activation recomputation (the loss head goes by row chunks); turn it off with set_recompute(false)"
        );
        let padded = download_f32(
            self.backend.as_ref(),
            arena.plan.logits.view(arena.acts.view()),
        )?;
        // Without the padding columns.
        let (v, stride) = (self.cfg.vocab_size, self.cfg.padded_vocab());
        Ok(padded
            .chunks(stride)
            .flat_map(|row| &row[..v])
            .copied()
            .collect())
    }

    // ---- named parameters -------------------------------------------------

    /// Every parameter name with its shape: the globals (`wte`, `wpe`,
    /// `ln_f.weight`, `ln_f.bias`), then `h.{layer}.{block name}` per layer.
    /// Layers that share a slot name the same memory.
    pub fn param_names(&self) -> Vec<(String, Vec<usize>)> {
        let mut names: Vec<_> = self
            .global
            .entries()
            .iter()
            .map(|e| (e.name.to_string(), e.shape.clone()))
            .collect();
        for layer in 0..self.cfg.n_layer {
            for e in self.block.entries() {
                names.push((format!("h.{layer}.{}", e.name), e.shape.clone()));
            }
        }
        names
    }

    /// The fp32 parameter and gradient views of a named parameter.
    fn resolve(&self, name: &str) -> Result<(View, View)> {
        let (slot, offset, len) = self.locate(name)?;
        Ok((
            slot.params.view().slice(offset, len),
            slot.grads.view().slice(offset, len),
        ))
    }

    /// The slot holding a named parameter, its offset and length.
    fn locate(&self, name: &str) -> Result<(&Slot, usize, usize)> {
        if let Some(e) = self.global.get(name) {
            return Ok((&self.globals, e.offset, e.numel()));
        }
        let unknown = || format!("unknown parameter name {name:?} (see Model::param_names)");
        let rest = name.strip_prefix("h.").with_context(unknown)?;
        let (layer, field) = rest.split_once('.').with_context(unknown)?;
        let layer: usize = layer.parse().ok().with_context(unknown)?;
        ensure!(layer < self.cfg.n_layer, "{}", unknown());
        let e = self.block.get(field).with_context(unknown)?;
        Ok((self.slots.slot_of(layer), e.offset, e.numel()))
    }

    pub fn read_param(&self, name: &str) -> Result<Vec<f32>> {
        self.backend.download(self.resolve(name)?.0)
    }

    pub fn read_grad(&self, name: &str) -> Result<Vec<f32>> {
        self.backend.download(self.resolve(name)?.1)
    }

    pub fn write_param(&self, name: &str, data: &[f32]) -> Result<()> {
        let (view, _) = self.resolve(name)?;
        ensure!(
            data.len() == view.len,
            "parameter {name} has {} elements, got {}",
            view.len,
            data.len()
        );
        self.backend.upload(view, data)?;
        let (slot, offset, len) = self.locate(name)?;
        slot.refresh_compute_copy(self.backend.as_ref(), offset, len)
    }

    // ---- the forward pass -------------------------------------------------

    /// Validates targets against the vocabulary; returns how many count.
    fn check_targets(&self, targets: &[u32], batch: usize, seq: usize) -> Result<usize> {
        ensure!(
            targets.len() == batch * seq,
            "expected {batch} x {seq} = {} targets, got {}",
            batch * seq,
            targets.len()
        );
        let v = self.cfg.vocab_size as u32;
        if let Some(i) = targets.iter().position(|&t| t >= v && t != IGNORE_INDEX) {
            bail!(
                "target {} at position {i} is outside the vocabulary of {v}",
                targets[i]
            );
        }
        Ok(targets.iter().filter(|&&t| t != IGNORE_INDEX).count())
    }

    /// Sums the per-position losses of the last forward pass.
    fn sum_losses(&self, targets: &[u32]) -> Result<(f64, usize)> {
        let arena = self.arena.as_ref().expect("forward planned the arena");
        let losses: Vec<f32> = self
            .backend
            .download(arena.plan.losses.view(arena.acts.view()))?;
        let mut sum = 0f64;
        let mut count = 0;
        for (&l, &t) in losses.iter().zip(targets) {
            if t != IGNORE_INDEX {
                sum += l as f64;
                count += 1;
            }
        }
        Ok((sum, count))
    }

    /// Plans and allocates the arenas for `(batch, seq)` unless they exist.
    fn ensure_arena(&mut self, batch: usize, seq: usize) -> Result<()> {
        if let Some(a) = &self.arena {
            let p = &a.plan;
            let same = (p.batch, p.seq, p.recompute, p.attention)
                == (batch, seq, self.recompute, self.attention());
            if same {
                return Ok(());
            }
        }
        // Free the old arenas first so the peak is the larger of the two.
        self.arena = None;
        let plan = ActivationPlan::new(
            &self.cfg,
            batch,
            seq,
            self.recompute,
            self.attention(),
            self.precision.compute_dtype(),
        );
        // Allocated as f32 words; each region views its bytes in its dtype.
        let acts = self.backend.alloc(DType::F32, plan.act_bytes / 4)?;
        let grads = self.backend.alloc(DType::F32, plan.grad_bytes / 4)?;
        self.arena = Some(Arena { plan, acts, grads });
        Ok(())
    }

    fn forward(
        &mut self,
        tokens: &[u32],
        targets: Option<&[u32]>,
        batch: usize,
        seq: usize,
        mode: Mode,
    ) -> Result<()> {
        ensure!(batch > 0 && seq > 0, "batch and seq must be > 0");
        ensure!(
            seq <= self.cfg.n_ctx,
            "sequence length {seq} exceeds the model's context n_ctx = {}",
            self.cfg.n_ctx
        );
        ensure!(
            tokens.len() == batch * seq,
            "expected {batch} x {seq} = {} tokens, got {}",
            batch * seq,
            tokens.len()
        );
        let v = self.cfg.vocab_size as u32;
        if let Some(i) = tokens.iter().position(|&t| t >= v) {
            bail!(
                "token {} at position {i} is outside the vocabulary of {v}",
                tokens[i]
            );
        }
        self.ensure_arena(batch, seq)?;
        let mut tape = if matches!(mode, Mode::Train { .. }) {
            Tape::new()
        } else {
            Tape::no_grad()
        };
        let result = self.record_forward(&mut tape, tokens, targets, mode);
        self.tape = tape;
        result
    }

    fn record_forward(
        &self,
        tape: &mut Tape,
        tokens: &[u32],
        targets: Option<&[u32]>,
        mode: Mode,
    ) -> Result<()> {
        let be = self.backend.as_ref();
        let arena = self.arena.as_ref().expect("arena planned");
        let plan = &arena.plan;
        let (acts, grads) = (arena.acts.view(), arena.grads.view());
        // Each region carries its dtype (see `plan`): activations and their
        // gradients in the compute dtype, LayerNorm statistics, losses and
        // flash's log-sum-exp in fp32.
        let act = |r: Region| r.view(acts);
        let grad = |r: Region| r.view(grads);
        let (b, t, c) = (plan.batch, plan.seq, self.cfg.n_embd);
        let n = b * t;
        let shape = AttnShape {
            batch: b,
            seq: t,
            channels: c,
            heads: self.cfg.n_head,
        };
        let dropout = match mode {
            Mode::Train { dropout_seed, .. } if self.cfg.dropout > 0.0 => {
                Some((self.cfg.dropout, dropout_seed))
            }
            _ => None,
        };
        let site_offset = |k: usize| (k * n * c) as u64;
        let g_resid = grad(plan.g_resid);
        let resid = |r: Region| Var {
            val: act(r),
            grad: g_resid,
        };

        let tok = plan.tokens.view(acts);
        be.upload_queued(tok, tokens)?;
        let wte = self.global_param("wte");
        let wpe = self.global_param("wpe");

        // Embeddings (BERT: with the token-type row, then their
        // LayerNorm), then dropout site 0.
        let x0 = resid(plan.x0);
        let (emb, emb_dropout) = match (dropout, plan.scratch, plan.g_emb) {
            (Some(d), Some(scratch), Some(g_emb)) => {
                let emb = Var {
                    val: act(scratch),
                    grad: grad(g_emb),
                };
                (emb, Some(d))
            }
            _ => (x0, None),
        };
        match self.cfg.arch {
            Arch::Gpt2 => autograd::embedding(be, tape, emb, tok, wte, wpe, None, b, t, c)?,
            Arch::Bert => {
                let planned = "BERT's plan has the embeddings' LayerNorm";
                let sum = Var {
                    val: act(plan.emb_sum.expect(planned)),
                    grad: grad(plan.g_emb_sum.expect(planned)),
                };
                // The first of the two token-type rows: type 0 everywhere.
                let wtt = self.global_param("wtt");
                let type0 = Param {
                    val: wtt.val.slice(0, c),
                    grad: wtt.grad.map(|g| g.slice(0, c)),
                };
                autograd::embedding(be, tape, sum, tok, wte, wpe, Some(type0), b, t, c)?;
                let stats = (
                    act(plan.emb_mean.expect(planned)),
                    act(plan.emb_rstd.expect(planned)),
                );
                self.global_norm("ln_emb")
                    .apply(be, tape, emb, stats, sum, n, c)?;
            }
        }
        if let Some((p, seed)) = emb_dropout {
            autograd::dropout(be, tape, x0, emb, p, seed, site_offset(0))?;
        }

        let gl = plan.g_layer;
        let post_norm = self.cfg.arch.post_norm();
        let mut x = x0;
        for (layer, la) in plan.layers.iter().enumerate() {
            let var = |a: Region, g: Region| Var {
                val: act(a),
                grad: grad(g),
            };
            // Pre-dropout outputs of the two branches, with dropout.
            let pre = |g: Option<Region>| plan.scratch.zip(g).map(|(a, g)| var(a, g));
            // Post-LN: `ln1` is the residual sum on the block's input
            // stream, and the stream between the sublayers has its own
            // gradient buffer (see `LayerGrads`).
            let (ln1, x_mid) = if post_norm {
                (resid(la.ln1), var(la.x_mid, gl.ln2))
            } else {
                (var(la.ln1, gl.ln1), resid(la.x_mid))
            };
            let block = BlockRun {
                params: self.block_params(layer),
                x,
                ln1,
                ln1_stats: (act(la.ln1_mean), act(la.ln1_rstd)),
                qkv: var(la.qkv, gl.qkv),
                attention: plan.attention,
                att: act(la.att),
                att_scratch: grad(gl.att_scratch),
                atty: var(la.atty, gl.atty),
                attn_pre: pre(gl.attn_branch),
                x_mid,
                ln2: var(la.ln2, gl.ln2),
                ln2_stats: (act(la.ln2_mean), act(la.ln2_rstd)),
                fc: var(la.fc, gl.fc),
                gelu: var(la.gelu, gl.gelu),
                mlp_pre: pre(gl.mlp_branch),
                x_out: resid(la.x_out),
                workspace: grad(gl.all),
                dropout: dropout.map(|(p, seed)| {
                    let site = |k: usize| DropoutSite {
                        p,
                        seed,
                        offset: site_offset(k),
                    };
                    (site(1 + 2 * layer), site(2 + 2 * layer))
                }),
                attn_dropout: dropout.map(|(p, seed)| AttnDropout {
                    p,
                    seed,
                    offset: (layer * b * self.cfg.n_head) as u64,
                }),
                shape,
                post_norm,
                activation: self.cfg.arch.gelu(),
            };
            // Recorded before the block, so it runs after the block's backward.
            if let Some(hook) = self.grad_ready.clone().filter(|_| tape.is_recording()) {
                if let Some(grads) = self.slot_completed_by(layer) {
                    tape.record(move |be| hook(be, grads));
                }
            }
            if plan.recompute && tape.is_recording() {
                // Forward now without saving for backward; the backward of
                // this block runs its forward again (into the shared
                // workspace, from its input `x`, which is kept) and then
                // that forward's own tape.
                block.run(be, &mut Tape::no_grad())?;
                tape.record(move |be| {
                    let mut inner = Tape::new();
                    block.run(be, &mut inner)?;
                    inner.backward(be)
                });
            } else {
                block.run(be, tape)?;
            }
            x = block.x_out;
        }

        // What the decoder reads: GPT-2's final LayerNorm, or BERT's LM
        // head transform `LN(gelu(dense(x)))`.
        let lnf = Var {
            val: act(plan.lnf),
            grad: grad(plan.g_lnf),
        };
        let lnf_stats = (act(plan.lnf_mean), act(plan.lnf_rstd));
        match self.cfg.arch {
            Arch::Gpt2 => self
                .global_norm("ln_f")
                .apply(be, tape, lnf, lnf_stats, x, n, c)?,
            Arch::Bert => {
                let planned = "BERT's plan has the head transform";
                let fc = Var {
                    val: act(plan.head_fc.expect(planned)),
                    grad: grad(plan.g_head_fc.expect(planned)),
                };
                let gelu = Var {
                    val: act(plan.head_gelu.expect(planned)),
                    grad: grad(plan.g_head_gelu.expect(planned)),
                };
                let dense = Linear {
                    weight: self.global_param("head.fc.weight"),
                    bias: Some(self.global_param("head.fc.bias")),
                };
                dense.apply(be, tape, fc, x, n, c, c)?;
                autograd::gelu(be, tape, self.cfg.arch.gelu(), gelu, fc)?;
                self.global_norm("head.ln")
                    .apply(be, tape, lnf, lnf_stats, gelu, n, c)?;
            }
        }

        let head = self.head(lnf, n);
        let grad_scale = match mode {
            Mode::Train { grad_scale, .. } => Some(grad_scale),
            Mode::Eval => None,
        };
        let tgt = plan.targets.view(acts);
        if let Some(targets) = targets {
            be.upload_queued(tgt, targets)?;
        }
        let (logits, losses) = (act(plan.logits), act(plan.losses));
        if plan.recompute {
            if targets.is_some() {
                head.chunked(be, logits, plan.head_rows, losses, tgt, grad_scale)?;
            }
            // Recorded last, so it runs first; g_lnf already holds the head's
            // gradient.
            autograd::zero_grad(tape, grad(plan.g_stream));
        } else {
            head.full(be, tape, logits, losses, targets.map(|_| tgt), grad_scale)?;
            // Recorded last, so it runs first: the global gradients start at zero.
            autograd::zero_grad(tape, grad(plan.g_globals));
        }
        Ok(())
    }

    /// The decoder over `rows` rows of `x`.
    fn head(&self, x: Var, rows: usize) -> Head {
        Head {
            x,
            wte: self.global_param("wte"),
            bias: self
                .global
                .get("head.decoder.bias")
                .map(|_| self.global_param("head.decoder.bias")),
            rows,
            channels: self.cfg.n_embd,
            vocab: self.cfg.vocab_size,
            padded_vocab: self.cfg.padded_vocab(),
        }
    }

    /// The global LayerNorm `{name}.weight`, `{name}.bias`.
    fn global_norm(&self, name: &str) -> Norm {
        let bias = format!("{name}.bias");
        Norm {
            weight: self.global_param(&format!("{name}.weight")),
            bias: self.ln_bias(self.global.get(&bias).map(|_| self.global_param(&bias))),
            eps: self.cfg.arch.layernorm_eps(),
        }
    }

    /// A global parameter with its gradient.
    fn global_param(&self, name: &str) -> Param {
        Param {
            val: self.global.view(self.globals.weights(), name),
            grad: Some(self.global.view(self.globals.grads.view(), name)),
        }
    }

    /// Layer `layer`'s parameters, from the slot the tie table gives it;
    /// without gradients where its slot does not train through it.
    fn block_params(&self, layer: usize) -> BlockParams {
        let slot = self.slots.slot_of(layer);
        let want_grad = self.slots.grad_enabled(layer);
        let (pv, gv) = (slot.weights(), slot.grads.view());
        let p = |name: &str| Param {
            val: self.block.view(pv, name),
            grad: want_grad.then(|| self.block.view(gv, name)),
        };
        let pb = |name: &str| {
            self.block.bias_view(pv, name).map(|val| Param {
                val,
                grad: want_grad.then(|| self.block.view(gv, name)),
            })
        };
        let linear = |name: &str| Linear {
            weight: p(&format!("{name}.weight")),
            bias: pb(&format!("{name}.bias")),
        };
        let norm = |name: &str| Norm {
            weight: p(&format!("{name}.weight")),
            bias: self.ln_bias(pb(&format!("{name}.bias"))),
            eps: self.cfg.arch.layernorm_eps(),
        };
        BlockParams {
            ln1: norm("ln1"),
            qkv: linear("attn.qkv"),
            attn_proj: linear("attn.proj"),
            ln2: norm("ln2"),
            fc: linear("mlp.fc"),
            mlp_proj: linear("mlp.proj"),
        }
    }

    /// A LayerNorm bias parameter, or the zero stand-in without biases.
    fn ln_bias(&self, bias: Option<Param>) -> Param {
        bias.unwrap_or_else(|| Param {
            val: self
                .zero_bias
                .as_ref()
                .expect("a model without biases has a zero bias buffer")
                .view(),
            grad: None,
        })
    }
}

/// The contents of a float view as f32, whatever its float dtype.
fn download_f32(be: &dyn Backend, v: View) -> Result<Vec<f32>> {
    Ok(match v.dtype {
        DType::BF16 => be
            .download::<half::bf16>(v)?
            .into_iter()
            .map(f32::from)
            .collect(),
        _ => be.download(v)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuBackend;

    fn cfg(dropout: f32, bias: bool) -> ModelConfig {
        ModelConfig {
            arch: Arch::Gpt2,
            n_layer: 2,
            n_embd: 16,
            n_head: 2,
            n_ctx: 8,
            vocab_size: 23,
            dropout,
            bias,
        }
    }

    fn model(cfg: ModelConfig) -> Model {
        Model::new(Arc::new(CpuBackend::new()), cfg, 7).unwrap()
    }

    fn batch(b: usize, t: usize, v: u32) -> (Vec<u32>, Vec<u32>) {
        let mut rng = HostRng::new(3);
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(v as u64) as u32).collect();
        let mut targets: Vec<u32> = (0..b * t).map(|_| rng.below(v as u64) as u32).collect();
        targets[1] = IGNORE_INDEX;
        (tokens, targets)
    }

    /// Central differences at the largest-gradient element of every tensor,
    /// with the same dropout seed for every evaluation so the masks agree.
    fn check_gradients(cfg: ModelConfig) {
        let mut m = model(cfg.clone());
        let (b, t) = (2, 5);
        let (tokens, targets) = batch(b, t, cfg.vocab_size as u32);
        m.zero_grads().unwrap();
        m.forward_backward(&tokens, &targets, b, t, 11, 1.0)
            .unwrap();
        let h = 1e-2f32;
        // Read every gradient first: the evaluations below accumulate more.
        let names: Vec<String> = m.param_names().into_iter().map(|(n, _)| n).collect();
        let grads: Vec<Vec<f32>> = names.iter().map(|n| m.read_grad(n).unwrap()).collect();
        for (name, grad) in names.iter().zip(grads) {
            let (i, &g) = grad
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap();
            let orig = m.read_param(name).unwrap();
            let mut loss_at = |x: f32| {
                let mut p = orig.clone();
                p[i] = x;
                m.write_param(name, &p).unwrap();
                m.forward_backward(&tokens, &targets, b, t, 11, 1.0)
                    .unwrap() as f64
            };
            let fd = (loss_at(orig[i] + h) - loss_at(orig[i] - h)) / (2.0 * h as f64);
            m.write_param(name, &orig).unwrap();
            let err = (fd - g as f64).abs();
            assert!(
                err <= 2e-4 + 2e-2 * (g as f64).abs(),
                "{name}[{i}]: analytic {g:e}, finite difference {fd:e}"
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences_with_dropout() {
        check_gradients(cfg(0.2, true));
    }

    #[test]
    fn gradients_match_finite_differences_without_biases() {
        check_gradients(cfg(0.0, false));
    }

    /// The vocabulary's padding rows (23 pad to 128) are zero, get a zero
    /// gradient and are left out of the loss: garbage written into them
    /// changes neither the loss nor any gradient.
    #[test]
    fn the_vocabulary_padding_is_out_of_the_loss_and_gets_no_gradient() {
        for arch in [Arch::Gpt2, Arch::Bert] {
            let c = ModelConfig {
                arch,
                ..cfg(0.0, true)
            };
            let mut m = model(c.clone());
            let be = m.backend().clone();
            let (tokens, targets) = batch(2, 6, c.vocab_size as u32);
            let padding: Vec<View> = ["wte", "head.decoder.bias"]
                .iter()
                .filter_map(|name| m.global_layout().get(name))
                .map(|e| {
                    let used = e.numel();
                    e.view(m.globals().params.view()).slice(used, e.len - used)
                })
                .collect();
            assert_eq!(padding.len(), if arch == Arch::Bert { 2 } else { 1 });
            let run = |m: &mut Model| {
                m.zero_grads().unwrap();
                let loss = m.forward_backward(&tokens, &targets, 2, 6, 5, 1.0).unwrap();
                let grads: Vec<f32> = be.download(m.globals().grads.view()).unwrap();
                (loss, grads)
            };
            for v in &padding {
                assert!(be.download::<f32>(*v).unwrap().iter().all(|&x| x == 0.0));
            }
            let (loss, grads) = run(&mut m);
            for v in &padding {
                let garbage: Vec<f32> = (0..v.len).map(|i| 1.0 + i as f32).collect();
                be.upload(*v, &garbage).unwrap();
            }
            let (loss_garbage, grads_garbage) = run(&mut m);
            assert_eq!(loss, loss_garbage, "{arch:?}");
            assert_eq!(grads, grads_garbage, "{arch:?}");
            for e in m.global_layout().entries() {
                let g = &grads[e.offset + e.numel()..e.offset + e.len];
                assert!(g.iter().all(|&x| x == 0.0), "{arch:?} {}", e.name);
            }
        }
    }

    #[test]
    fn layers_on_one_slot_sum_their_gradients() {
        let c = cfg(0.1, true);
        let (tokens, targets) = batch(2, 6, c.vocab_size as u32);
        // Untied, with layer 1 holding a copy of layer 0's weights.
        let mut untied = model(c.clone());
        for (name, _) in untied.param_names() {
            if let Some(field) = name.strip_prefix("h.0.") {
                let w = untied.read_param(&name).unwrap();
                untied.write_param(&format!("h.1.{field}"), &w).unwrap();
            }
        }
        untied.zero_grads().unwrap();
        let loss_untied = untied
            .forward_backward(&tokens, &targets, 2, 6, 5, 1.0)
            .unwrap();
        // Tied: both layers on slot 0, slot 1 freed.
        let mut tied = model(c);
        let effect = tied.tie(1, 0).unwrap();
        assert_eq!(effect.freed, Some(1));
        tied.zero_grads().unwrap();
        let loss_tied = tied
            .forward_backward(&tokens, &targets, 2, 6, 5, 1.0)
            .unwrap();
        assert_eq!(loss_tied, loss_untied);
        for e in tied.block_layout().entries() {
            let g0 = untied.read_grad(&format!("h.0.{}", e.name)).unwrap();
            let g1 = untied.read_grad(&format!("h.1.{}", e.name)).unwrap();
            let g = tied.read_grad(&format!("h.0.{}", e.name)).unwrap();
            for k in 0..g.len() {
                let want = g0[k] + g1[k];
                assert!(
                    (g[k] - want).abs() <= 1e-6 + 1e-5 * want.abs(),
                    "{}[{k}]: {} vs {want}",
                    e.name,
                    g[k]
                );
            }
        }
    }

    #[test]
    fn micro_batches_accumulate_and_eval_matches_training_without_dropout() {
        let c = cfg(0.0, true);
        let (tokens, targets) = batch(2, 8, c.vocab_size as u32);
        let mut m = model(c);
        m.zero_grads().unwrap();
        let loss = m.forward_backward(&tokens, &targets, 2, 8, 0, 1.0).unwrap();
        let once = m.read_grad("h.1.mlp.fc.weight").unwrap();
        m.zero_grads().unwrap();
        m.forward_backward(&tokens, &targets, 2, 8, 0, 0.5).unwrap();
        m.forward_backward(&tokens, &targets, 2, 8, 0, 0.5).unwrap();
        let twice = m.read_grad("h.1.mlp.fc.weight").unwrap();
        for (a, b) in once.iter().zip(&twice) {
            assert!((a - b).abs() <= 1e-6 + 1e-5 * a.abs(), "{a} vs {b}");
        }
        let (sum, count) = m.eval_loss(&tokens, &targets, 2, 8).unwrap();
        assert_eq!(count, 15);
        assert!(((sum / count as f64) as f32 - loss).abs() < 1e-6);
        // Sampling at another shape re-plans the arenas.
        let last = m.logits_last(&tokens[..5], 5).unwrap();
        assert_eq!(last.len(), 23);
    }

    #[test]
    fn dropout_depends_on_the_seed_and_is_off_in_eval() {
        let c = cfg(0.2, true);
        let (tokens, targets) = batch(2, 8, c.vocab_size as u32);
        let mut m = model(c);
        let a = m.forward_backward(&tokens, &targets, 2, 8, 1, 1.0).unwrap();
        let b = m.forward_backward(&tokens, &targets, 2, 8, 2, 1.0).unwrap();
        let a2 = m.forward_backward(&tokens, &targets, 2, 8, 1, 1.0).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a2);
        let e1 = m.eval_loss(&tokens, &targets, 2, 8).unwrap();
        let e2 = m.eval_loss(&tokens, &targets, 2, 8).unwrap();
        assert_eq!(e1, e2);
        assert_ne!((e1.0 / e1.1 as f64) as f32, a);
    }

    #[test]
    fn the_model_can_move_between_threads() {
        fn is_send<T: Send>() {}
        is_send::<Model>();
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut m = model(cfg(0.0, true));
        let e = m
            .forward_backward(&[0, 99], &[0, 1], 1, 2, 0, 1.0)
            .unwrap_err();
        assert!(e.to_string().contains("vocabulary"), "{e}");
        let e = m.eval_loss(&[0; 9], &[0; 9], 1, 9).unwrap_err();
        assert!(e.to_string().contains("n_ctx"), "{e}");
        let e = m.eval_loss(&[0; 4], &[0; 3], 1, 4).unwrap_err();
        assert!(e.to_string().contains("targets"), "{e}");
        let e = m
            .forward_backward(&[0, 1], &[IGNORE_INDEX; 2], 1, 2, 0, 1.0)
            .unwrap_err();
        assert!(e.to_string().contains("ignore"), "{e}");
        assert!(m.write_param("h.5.ln1.weight", &[0.0]).is_err());
        assert!(m.write_param("wte", &[0.0]).is_err());
    }
}
