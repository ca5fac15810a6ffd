//! The activation plan: every tensor a forward and backward pass at one
//! (batch, seq) needs, as offsets into two arenas allocated once.
//!
//! The *activation* arena holds what the backward reads (per layer), the
//! logits and the token ids. The *gradient* arena holds the gradients of the
//! activations; it does not grow with depth: the residual stream has one
//! gradient buffer for all layers (see `gpt2.rs`), and the per-layer
//! gradients share one workspace that is zeroed before each layer's backward.
//!
//! With *recomputation* (activation checkpointing) only each block's output
//! (the residual stream) is kept per layer; the rest of a block's
//! activations live in one workspace that every block's forward overwrites,
//! and the backward of block `i` first runs block `i`'s forward again from
//! its input (the previous block's output) to refill it. Depth then costs
//! `B*T*C` floats per block instead of about `16 B*T*C + B*H*T*T`, for one
//! more forward pass of the blocks per step. The loss head then also goes by
//! row chunks (see `head_rows`), so the logits never exist for all rows at
//! once.
//!
//! What a layer's attention saves depends on its [`AttentionPath`]: the
//! unfused path keeps the probabilities `B*H*T*T` per layer (and a
//! workspace of that size in the gradient arena), flash keeps the per-row
//! log-sum-exp `B*H*T` (and the backward's `D = rowsum(dout * out)` of that
//! size as workspace); its output is `atty`, which both paths keep.
//!
//! Both architectures use one plan; BERT adds the embeddings' LayerNorm and
//! the LM head's transform, and reads the block regions as
//! [`LayerActs`] says.

use super::{Arch, AttentionPath, ModelConfig};
use crate::mem::{DType, View};
use crate::ops::attention::AttnShape;

/// Most bytes of logits the chunked loss head (with recomputation) keeps at
/// once. Each chunk passes once more over the head's weight gradient (vocab
/// x width), so chunks are large: 128 MiB is 667 rows of GPT-2's 50257
/// logits (1024 rows go as 2 x 512, the paper config's 4096 as 7 x 586).
pub const HEAD_CHUNK_BYTES: usize = 128 << 20;

/// Offsets are rounded up to 256 bytes so every view is as aligned as the
/// allocation itself, whatever its dtype.
const ALIGN_BYTES: usize = 256;

/// Hands out consecutive aligned regions of one arena, sized in bytes: the
/// activations and their gradients in the compute dtype (bf16 halves them),
/// statistics and losses in fp32, token ids in u32.
struct Bump {
    next: usize,
    compute: DType,
}

impl Bump {
    fn new(compute: DType) -> Self {
        Bump { next: 0, compute }
    }

    /// `len` elements of the compute dtype.
    fn take(&mut self, len: usize) -> Region {
        self.take_as(len, self.compute)
    }

    fn take_as(&mut self, len: usize, dtype: DType) -> Region {
        let r = Region {
            offset: self.next,
            len,
            dtype,
        };
        self.next += (len * dtype.size()).next_multiple_of(ALIGN_BYTES);
        r
    }

    /// Everything taken since byte `start`, as one compute-dtype region (for
    /// zeroing a region that contains others: zero bits are zero in every
    /// dtype).
    fn since(&self, start: usize) -> Region {
        Region {
            offset: start,
            len: (self.next - start) / self.compute.size(),
            dtype: self.compute,
        }
    }
}

/// `len` elements of `dtype` at byte `offset` inside an arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub offset: usize,
    pub len: usize,
    pub dtype: DType,
}

impl Region {
    /// The region inside `arena` (any dtype; offsets are in bytes).
    pub fn view(&self, arena: View) -> View {
        let size = self.dtype.size();
        debug_assert_eq!(self.offset % size, 0);
        arena
            .reinterpret(self.dtype)
            .slice(self.offset / size, self.len)
    }

    /// Bytes from the arena's start to the region's end.
    pub fn end(&self) -> usize {
        self.offset + self.len * self.dtype.size()
    }
}

/// Saved activations of one block. `x_mid` and `x_out` are the residual
/// stream after each sublayer in both architectures; `ln1` and `ln2` are the
/// other side of each LayerNorm: its output in GPT-2 (pre-LN, the sublayer's
/// input), its input in BERT (post-LN, the residual sum
/// `stream + branch`, which the LayerNorm turns into the stream).
#[derive(Clone, Copy, Debug)]
pub struct LayerActs {
    pub ln1: Region,
    pub ln1_mean: Region,
    pub ln1_rstd: Region,
    pub qkv: Region,
    /// What the attention saves for its backward: the probabilities
    /// (unfused) or the log-sum-exp (flash); see [`AttentionPath`].
    pub att: Region,
    pub atty: Region,
    /// Residual stream after the attention branch.
    pub x_mid: Region,
    pub ln2: Region,
    pub ln2_mean: Region,
    pub ln2_rstd: Region,
    pub fc: Region,
    pub gelu: Region,
    /// Residual stream after the block (the next block's input).
    pub x_out: Region,
}

/// Gradients of one block's activations (shared by all blocks). In BERT
/// the stream is cut by LayerNorms, so its gradient needs two buffers:
/// `g_resid` for the block's input, `ln1` and `x_out`, and `ln2` here for
/// `x_mid` and `ln2` (`ln1` is then unused).
#[derive(Clone, Copy, Debug)]
pub struct LayerGrads {
    pub ln1: Region,
    pub qkv: Region,
    /// The attention's workspace: `T x T` per head (unfused) or `D`, one
    /// value per row (flash).
    pub att_scratch: Region,
    pub atty: Region,
    /// Before dropout (only planned with dropout; otherwise the branch
    /// output's gradient is the residual gradient itself).
    pub attn_branch: Option<Region>,
    pub ln2: Region,
    pub fc: Region,
    pub gelu: Region,
    pub mlp_branch: Option<Region>,
    /// The whole workspace, zeroed before each layer's backward.
    pub all: Region,
}

#[derive(Clone, Debug)]
pub struct ActivationPlan {
    pub batch: usize,
    pub seq: usize,
    /// Blocks share one workspace for everything but `x_out`, and their
    /// backward recomputes it (see the module docs).
    pub recompute: bool,
    /// Which attention the regions are sized for.
    pub attention: AttentionPath,
    pub tokens: Region,
    pub targets: Region,
    /// Residual stream after the embeddings.
    pub x0: Region,
    /// Pre-dropout values (transient, forward only); planned with dropout.
    pub scratch: Option<Region>,
    /// BERT: the sum of the embeddings, before their LayerNorm.
    pub emb_sum: Option<Region>,
    pub emb_mean: Option<Region>,
    pub emb_rstd: Option<Region>,
    pub layers: Vec<LayerActs>,
    /// BERT: the LM head's dense layer and its GELU, before `lnf`.
    pub head_fc: Option<Region>,
    pub head_gelu: Option<Region>,
    /// The decoder's input: ln_f's output (GPT-2) or the LM head
    /// transform's LayerNorm's (BERT).
    pub lnf: Region,
    pub lnf_mean: Region,
    pub lnf_rstd: Region,
    /// The logits of `head_rows` rows; the loss overwrites them with their
    /// gradient in training.
    pub logits: Region,
    /// Rows of logits that exist at once: all `batch * seq`, or with
    /// recomputation a chunk of about [`HEAD_CHUNK_BYTES`].
    pub head_rows: usize,
    pub losses: Region,
    /// Bytes of the activation arena.
    pub act_bytes: usize,

    /// Gradient of the residual stream, shared by every layer.
    pub g_resid: Region,
    /// Gradient of the embeddings before dropout; planned with dropout.
    pub g_emb: Option<Region>,
    /// BERT: gradients of `emb_sum`, `head_fc` and `head_gelu`.
    pub g_emb_sum: Option<Region>,
    pub g_head_fc: Option<Region>,
    pub g_head_gelu: Option<Region>,
    pub g_lnf: Region,
    pub g_layer: LayerGrads,
    /// The global gradients (all of the above), zeroed at the start of
    /// every backward.
    pub g_globals: Region,
    /// All but `g_lnf`: the chunked loss head (recomputation) writes
    /// `g_lnf` during the forward pass, before the backward starts.
    pub g_stream: Region,
    /// Bytes of the gradient arena.
    pub grad_bytes: usize,
}

impl ActivationPlan {
    pub fn new(
        cfg: &ModelConfig,
        batch: usize,
        seq: usize,
        recompute: bool,
        attention: AttentionPath,
        compute: DType,
    ) -> Self {
        let (n, c) = (batch * seq, cfg.n_embd);
        let nc = n * c;
        let shape = AttnShape {
            batch,
            seq,
            channels: c,
            heads: cfg.n_head,
        };
        let (att, att_scratch) = (attention.saved_len(shape), attention.scratch_len(shape));
        let dropout = cfg.dropout > 0.0;
        let bert = cfg.arch == Arch::Bert;

        // The attention's saved state and workspace: the probabilities in the
        // compute dtype (unfused) or the log-sum-exp and D in fp32 (flash).
        let att_dtype = match attention {
            AttentionPath::Unfused => compute,
            AttentionPath::Flash => DType::F32,
        };
        let mut a = Bump::new(compute);
        let tokens = a.take_as(n, DType::U32);
        let targets = a.take_as(n, DType::U32);
        let x0 = a.take(nc);
        let scratch = dropout.then(|| a.take(nc));
        let emb_sum = bert.then(|| a.take(nc));
        let emb_mean = bert.then(|| a.take_as(n, DType::F32));
        let emb_rstd = bert.then(|| a.take_as(n, DType::F32));
        let block = |a: &mut Bump| LayerActs {
            ln1: a.take(nc),
            ln1_mean: a.take_as(n, DType::F32),
            ln1_rstd: a.take_as(n, DType::F32),
            qkv: a.take(3 * nc),
            att: a.take_as(att, att_dtype),
            atty: a.take(nc),
            x_mid: a.take(nc),
            ln2: a.take(nc),
            ln2_mean: a.take_as(n, DType::F32),
            ln2_rstd: a.take_as(n, DType::F32),
            fc: a.take(4 * nc),
            gelu: a.take(4 * nc),
            x_out: a.take(nc),
        };
        let layers = if recompute {
            // The workspace's own x_out serves as block 0's output.
            let shared = block(&mut a);
            (0..cfg.n_layer)
                .map(|i| LayerActs {
                    x_out: if i == 0 { shared.x_out } else { a.take(nc) },
                    ..shared
                })
                .collect()
        } else {
            (0..cfg.n_layer).map(|_| block(&mut a)).collect()
        };
        let head_fc = bert.then(|| a.take(nc));
        let head_gelu = bert.then(|| a.take(nc));
        let lnf = a.take(nc);
        let lnf_mean = a.take_as(n, DType::F32);
        let lnf_rstd = a.take_as(n, DType::F32);
        let head_rows = if recompute {
            // Equal chunks: a short last one would run at a fraction of the
            // speed of the others.
            let most = (HEAD_CHUNK_BYTES / (compute.size() * cfg.padded_vocab())).clamp(1, n);
            n.div_ceil(n.div_ceil(most))
        } else {
            n
        };
        let logits = a.take(head_rows * cfg.padded_vocab());
        let losses = a.take_as(n, DType::F32);

        let mut g = Bump::new(compute);
        let g_resid = g.take(nc);
        let g_emb = dropout.then(|| g.take(nc));
        let g_emb_sum = bert.then(|| g.take(nc));
        let g_head_fc = bert.then(|| g.take(nc));
        let g_head_gelu = bert.then(|| g.take(nc));
        let g_stream = g.since(0);
        let g_lnf = g.take(nc);
        let g_globals = g.since(0);
        let start = g.next;
        let mut g_layer = LayerGrads {
            ln1: g.take(nc),
            qkv: g.take(3 * nc),
            att_scratch: g.take_as(att_scratch, att_dtype),
            atty: g.take(nc),
            attn_branch: dropout.then(|| g.take(nc)),
            ln2: g.take(nc),
            fc: g.take(4 * nc),
            gelu: g.take(4 * nc),
            mlp_branch: dropout.then(|| g.take(nc)),
            // Set below, once every region of the workspace is taken.
            all: g.since(g.next),
        };
        g_layer.all = g.since(start);

        ActivationPlan {
            batch,
            seq,
            recompute,
            attention,
            tokens,
            targets,
            x0,
            scratch,
            emb_sum,
            emb_mean,
            emb_rstd,
            layers,
            head_fc,
            head_gelu,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            head_rows,
            losses,
            act_bytes: a.next,
            g_resid,
            g_emb,
            g_emb_sum,
            g_head_fc,
            g_head_gelu,
            g_lnf,
            g_layer,
            g_globals,
            g_stream,
            grad_bytes: g.next,
        }
    }

    /// Bytes of both arenas.
    pub fn bytes(&self) -> usize {
        self.act_bytes + self.grad_bytes
    }
}

/// Bytes of activation memory (activations plus their gradients) that one
/// training step at `(batch, seq)` allocates, with or without recomputation,
/// with the given attention path; independent of tying.
pub fn activation_bytes(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    recompute: bool,
    attention: AttentionPath,
    compute: DType,
) -> usize {
    ActivationPlan::new(cfg, batch, seq, recompute, attention, compute).bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNFUSED: AttentionPath = AttentionPath::Unfused;
    const F32: DType = DType::F32;

    fn cfg(n_layer: usize) -> ModelConfig {
        ModelConfig {
            arch: Arch::Gpt2,
            n_layer,
            n_embd: 24,
            n_head: 3,
            n_ctx: 8,
            vocab_size: 13,
            dropout: 0.1,
            bias: true,
        }
    }

    #[test]
    fn regions_are_aligned_disjoint_and_grad_arena_does_not_grow_with_depth() {
        let mut cfg = cfg(3);
        let p = ActivationPlan::new(&cfg, 2, 5, false, UNFUSED, F32);
        let mut regions = vec![
            p.tokens,
            p.targets,
            p.x0,
            p.scratch.unwrap(),
            p.lnf,
            p.logits,
        ];
        for l in &p.layers {
            regions.extend([
                l.ln1, l.qkv, l.att, l.atty, l.x_mid, l.ln2, l.fc, l.gelu, l.x_out,
            ]);
        }
        regions.sort_by_key(|r| r.offset);
        for w in regions.windows(2) {
            assert_eq!(w[0].offset % ALIGN_BYTES, 0);
            assert!(w[0].end() <= w[1].offset);
        }
        assert!(p.act_bytes >= regions.last().unwrap().end());
        assert_eq!(p.g_layer.all.end(), p.grad_bytes);

        let grad_len = p.grad_bytes;
        cfg.n_layer = 6;
        let deeper = ActivationPlan::new(&cfg, 2, 5, false, UNFUSED, F32);
        assert_eq!(deeper.grad_bytes, grad_len);
        assert!(deeper.act_bytes > p.act_bytes);
        assert_eq!(
            activation_bytes(&cfg, 2, 5, false, UNFUSED, F32),
            deeper.bytes()
        );
    }

    #[test]
    fn recomputation_keeps_one_block_output_per_layer_beside_one_workspace() {
        let cfg = cfg(4);
        let (full, re) = (
            ActivationPlan::new(&cfg, 2, 5, false, UNFUSED, F32),
            ActivationPlan::new(&cfg, 2, 5, true, UNFUSED, F32),
        );
        let ws = re.layers[0];
        let workspace = [
            ws.ln1,
            ws.ln1_mean,
            ws.ln1_rstd,
            ws.qkv,
            ws.att,
            ws.atty,
            ws.x_mid,
            ws.ln2,
            ws.ln2_mean,
            ws.ln2_rstd,
            ws.fc,
            ws.gelu,
        ];
        let outputs: Vec<Region> = re.layers.iter().map(|l| l.x_out).collect();
        for (i, l) in re.layers.iter().enumerate() {
            let mut shared = [
                l.ln1, l.ln1_mean, l.ln1_rstd, l.qkv, l.att, l.atty, l.x_mid, l.ln2, l.ln2_mean,
                l.ln2_rstd, l.fc, l.gelu,
            ];
            assert_eq!(shared, workspace, "layer {i} uses the workspace");
            shared.sort_by_key(|r| r.offset);
            for r in shared.iter().chain(&outputs) {
                if *r != l.x_out {
                    let apart = r.end() <= l.x_out.offset || l.x_out.end() <= r.offset;
                    assert!(apart, "layer {i}'s output overlaps {r:?}");
                }
            }
        }
        // Per extra layer: one aligned B*T*C region instead of a whole block.
        let nc = (2 * 5 * 24 * 4usize).next_multiple_of(ALIGN_BYTES);
        let per_layer = (full.act_bytes - re.act_bytes) / (cfg.n_layer - 1);
        assert_eq!(full.act_bytes - re.act_bytes, per_layer * (cfg.n_layer - 1));
        let block_stride = full.layers[1].x_out.offset - full.layers[0].x_out.offset;
        assert_eq!(per_layer + nc, block_stride);
        assert_eq!(re.grad_bytes, full.grad_bytes);
    }

    /// Flash keeps `B*H*T` log-sum-exps per layer where the unfused path
    /// keeps `B*H*T*T` probabilities, and its workspace shrinks alike;
    /// nothing else in the plan changes.
    #[test]
    fn flash_plans_one_value_per_row_where_unfused_plans_the_probabilities() {
        let aligned = |len: usize| (4 * len).next_multiple_of(ALIGN_BYTES);
        let cfg = cfg(4);
        // T = 37: B*H*T*T is far above B*H*T even after alignment.
        let (b, t, h) = (2, 37, cfg.n_head);
        for recompute in [false, true] {
            let unfused = ActivationPlan::new(&cfg, b, t, recompute, UNFUSED, F32);
            let flash = ActivationPlan::new(&cfg, b, t, recompute, AttentionPath::Flash, F32);
            assert_eq!(flash.attention, AttentionPath::Flash);
            for (u, f) in unfused.layers.iter().zip(&flash.layers) {
                assert_eq!((u.att.len, f.att.len), (b * h * t * t, b * h * t));
            }
            assert_eq!(unfused.g_layer.att_scratch.len, b * h * t * t);
            assert_eq!(flash.g_layer.att_scratch.len, b * h * t);
            let per_layer = aligned(b * h * t * t) - aligned(b * h * t);
            // With recomputation one workspace holds the only `att`.
            let layers = if recompute { 1 } else { cfg.n_layer };
            assert_eq!(unfused.act_bytes - flash.act_bytes, layers * per_layer);
            assert_eq!(unfused.grad_bytes - flash.grad_bytes, per_layer);
        }
    }

    /// In bf16 every activation and activation gradient takes 2 bytes per
    /// element; LayerNorm statistics, losses, token ids and flash's
    /// log-sum-exp keep 4. So the arenas are a little over half the fp32
    /// ones, and exactly the fp32 regions stay the same size.
    #[test]
    fn bf16_plans_halve_the_activations_but_not_the_statistics() {
        let cfg = cfg(3);
        for path in [UNFUSED, AttentionPath::Flash] {
            let full = ActivationPlan::new(&cfg, 4, 8, false, path, F32);
            let half = ActivationPlan::new(&cfg, 4, 8, false, path, DType::BF16);
            let (f, h) = (full.layers[1], half.layers[1]);
            for (a, b) in [(f.qkv, h.qkv), (f.fc, h.fc), (f.x_out, h.x_out)] {
                assert_eq!(
                    (a.len, a.dtype, b.len, b.dtype),
                    (b.len, F32, a.len, DType::BF16)
                );
            }
            assert_eq!((h.ln1_mean.dtype, h.ln1_rstd.dtype), (F32, F32));
            assert_eq!((half.losses.dtype, half.tokens.dtype), (F32, DType::U32));
            let att_dtype = if path == UNFUSED { DType::BF16 } else { F32 };
            assert_eq!(h.att.dtype, att_dtype);
            let ratio = half.bytes() as f64 / full.bytes() as f64;
            assert!((0.5..0.6).contains(&ratio), "{path:?}: {ratio}");
            // Regions of the compute dtype never overlap in bf16 either.
            let mut all: Vec<Region> = half
                .layers
                .iter()
                .flat_map(|l| {
                    [
                        l.ln1, l.ln1_mean, l.qkv, l.att, l.atty, l.fc, l.gelu, l.x_out,
                    ]
                })
                .chain([
                    half.tokens,
                    half.targets,
                    half.x0,
                    half.lnf,
                    half.logits,
                    half.losses,
                ])
                .collect();
            all.sort_by_key(|r| r.offset);
            for w in all.windows(2) {
                assert!(w[0].end() <= w[1].offset && w[0].offset % ALIGN_BYTES == 0);
            }
            assert!(half.act_bytes >= all.last().unwrap().end());
        }
    }
}
