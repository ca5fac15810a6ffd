//! The registry: the one list of ops.
//!
//! [`for_each_op!`] names every op as `family::Struct => case`, where
//! `family` is the module of `ops/` that holds the struct's contract and
//! `case` builds its conformance case. The list generates the [`Op`] enum and
//! [`ENTRIES`] here; the CPU backend and the kernel backend generate their
//! dispatch from it (each op struct implements their per-op trait), the
//! profiler names ops through [`Op::name`], and the conformance harness walks
//! [`ENTRIES`]. Nothing else lists the ops. The order is the order of the
//! conformance table.

use super::case::{tol_for, Bound, CaseBuilder, Dims, Init, TensorId};
use super::Contract;
use super::{activation, attention, elementwise, embedding, layernorm, loss, matmul, optimizer};
use anyhow::Result;

/// Calls `$callback! { family::Struct => case, ... }` with every op.
macro_rules! for_each_op {
    ($callback:ident) => {
        $callback! {
            elementwise::Fill => cases::fill,
            elementwise::CopyView => cases::copy,
            elementwise::Add => cases::add,
            elementwise::Accumulate => cases::accumulate,
            activation::GeluFwd => cases::gelu_fwd,
            activation::GeluBwd => cases::gelu_bwd,
            activation::GeluErfFwd => cases::gelu_erf_fwd,
            activation::GeluErfBwd => cases::gelu_erf_bwd,
            activation::DropoutFwd => cases::dropout_fwd,
            activation::DropoutBwd => cases::dropout_bwd,
            embedding::EmbeddingFwd => cases::embedding_fwd,
            embedding::EmbeddingBwd => cases::embedding_bwd,
            layernorm::LayernormFwd => cases::layernorm_fwd,
            layernorm::LayernormBwd => cases::layernorm_bwd,
            matmul::MatmulFwd => cases::matmul_fwd,
            matmul::MatmulBwd => cases::matmul_bwd,
            attention::AttentionFwd => cases::attention_fwd,
            attention::AttentionBwd => cases::attention_bwd,
            loss::SoftmaxXent => cases::softmax_xent,
            optimizer::Adamw => cases::adamw,
            optimizer::SumSquares => cases::sum_squares,
        }
    };
}
pub(crate) use for_each_op;

/// One registry entry.
pub struct Entry {
    pub name: &'static str,
    /// The `ops/` module (and `cpu/`, `cuda/ops/` file) of the op.
    pub family: &'static str,
    /// Builds the op's conformance case at the given sizes.
    pub case: fn(&mut CaseBuilder, Dims),
}

macro_rules! define_ops {
    ($($family:ident::$op:ident => $case:path,)*) => {
        /// Every op's arguments; see [`crate::ops`].
        #[derive(Clone, Copy, Debug)]
        pub enum Op {
            $($op($family::$op),)*
        }

        impl Op {
            pub fn name(&self) -> &'static str {
                match self {
                    $(Op::$op(_) => <$family::$op as Contract>::NAME,)*
                }
            }
            pub fn family(&self) -> &'static str {
                match self {
                    $(Op::$op(_) => stringify!($family),)*
                }
            }
            /// Validates the call (see [`crate::ops::check`]).
            pub fn check(&self) -> Result<()> {
                match self {
                    $(Op::$op(args) => args.check(),)*
                }
            }
            /// The sizes that matter, for messages and the profiler.
            pub fn shape(&self) -> String {
                match self {
                    $(Op::$op(args) => args.shape(),)*
                }
            }
        }

        $(
            impl From<$family::$op> for Op {
                fn from(args: $family::$op) -> Op {
                    Op::$op(args)
                }
            }
        )*

        /// Every op, in the order of the conformance table.
        pub static ENTRIES: &[Entry] = &[
            $(Entry {
                name: <$family::$op as Contract>::NAME,
                family: stringify!($family),
                case: $case,
            },)*
        ];
    };
}
for_each_op!(define_ops);

/// The conformance case of every op: random inputs at the given sizes (none
/// a multiple of a kernel's tile), the outputs to compare and the tolerance
/// of the normalised error (see `crate::conformance`). Outputs and gradients
/// start from random values, so the `+=` contract is checked too.
mod cases {
    use super::*;
    use crate::ops::attention::AttnShape;
    use crate::ops::optimizer::AdamWStep;

    /// An odd length for the elementwise ops.
    fn odd_len(d: Dims) -> usize {
        d.batch * d.seq * d.channels + 3
    }

    pub fn fill(b: &mut CaseBuilder, d: Dims) {
        let out = b.random(odd_len(d), 1.0);
        b.run(move |t| {
            elementwise::Fill {
                dst: t[out],
                value: 0.375,
            }
            .into()
        });
        b.compare(&[out], 0.0);
    }

    pub fn copy(b: &mut CaseBuilder, d: Dims) {
        let (out, x) = (b.random(odd_len(d), 1.0), b.random(odd_len(d), 1.0));
        b.run(move |t| {
            elementwise::CopyView {
                dst: t[out],
                src: t[x],
            }
            .into()
        });
        b.compare(&[out], 0.0);
    }

    pub fn add(b: &mut CaseBuilder, d: Dims) {
        let len = odd_len(d);
        let (out, x, y) = (b.random(len, 1.0), b.random(len, 1.0), b.random(len, 1.0));
        b.run(move |t| {
            elementwise::Add {
                out: t[out],
                a: t[x],
                b: t[y],
            }
            .into()
        });
        // In place, as the residual stream uses it.
        b.run(move |t| {
            elementwise::Add {
                out: t[x],
                a: t[x],
                b: t[y],
            }
            .into()
        });
        b.compare(&[out, x], tol_for(1));
    }

    pub fn accumulate(b: &mut CaseBuilder, d: Dims) {
        let (dst, src) = (b.random(odd_len(d), 1.0), b.random(odd_len(d), 1.0));
        b.run(move |t| {
            elementwise::Accumulate {
                dst: t[dst],
                src: t[src],
            }
            .into()
        });
        b.compare(&[dst], tol_for(1));
    }

    pub fn gelu_fwd(b: &mut CaseBuilder, d: Dims) {
        let (out, x) = (b.random(odd_len(d), 1.0), b.random(odd_len(d), 2.0));
        b.run(move |t| {
            activation::GeluFwd {
                out: t[out],
                inp: t[x],
            }
            .into()
        });
        b.compare(&[out], 1e-5);
    }

    pub fn gelu_bwd(b: &mut CaseBuilder, d: Dims) {
        let len = odd_len(d);
        let (dx, x, dy) = (b.random(len, 1.0), b.random(len, 2.0), b.random(len, 1.0));
        b.run(move |t| {
            activation::GeluBwd {
                dinp: t[dx],
                inp: t[x],
                dout: t[dy],
            }
            .into()
        });
        b.compare(&[dx], 1e-5);
    }

    /// erfcf within 4 ulp, expf within 2 and a few roundings of products
    /// and sums: 16 ulp of f32 relative to the largest output bound them.
    const GELU_ERF_TOL: f64 = 16.0 * f32::EPSILON as f64;

    pub fn gelu_erf_fwd(b: &mut CaseBuilder, d: Dims) {
        // Scale 3: both tails of the normal distribution function.
        let (out, x) = (b.random(odd_len(d), 1.0), b.random(odd_len(d), 3.0));
        b.run(move |t| {
            activation::GeluErfFwd {
                out: t[out],
                inp: t[x],
            }
            .into()
        });
        b.compare(&[out], GELU_ERF_TOL);
    }

    pub fn gelu_erf_bwd(b: &mut CaseBuilder, d: Dims) {
        let len = odd_len(d);
        let (dx, x, dy) = (b.random(len, 1.0), b.random(len, 3.0), b.random(len, 1.0));
        b.run(move |t| {
            activation::GeluErfBwd {
                dinp: t[dx],
                inp: t[x],
                dout: t[dy],
            }
            .into()
        });
        b.compare(&[dx], GELU_ERF_TOL);
    }

    pub fn dropout_fwd(b: &mut CaseBuilder, d: Dims) {
        let (out, x) = (b.random(odd_len(d), 1.0), b.random(odd_len(d), 1.0));
        b.run(move |t| {
            activation::DropoutFwd {
                out: t[out],
                inp: t[x],
                p: 0.2,
                seed: 99,
                offset: 12_345,
            }
            .into()
        });
        b.compare(&[out], 1e-6);
    }

    pub fn dropout_bwd(b: &mut CaseBuilder, d: Dims) {
        let (dx, dy) = (b.random(odd_len(d), 1.0), b.random(odd_len(d), 1.0));
        b.run(move |t| {
            activation::DropoutBwd {
                dinp: t[dx],
                dout: t[dy],
                p: 0.3,
                seed: 7,
                offset: 1 << 33,
            }
            .into()
        });
        b.compare(&[dx], 1e-6);
    }

    pub fn embedding_fwd(b: &mut CaseBuilder, d: Dims) {
        let (n, c) = (d.batch * d.seq, d.channels);
        let out = b.random(n * c, 1.0);
        let tok = b.tokens(n, d.vocab);
        let (wte, wpe) = (b.random(d.vocab * c, 1.0), b.random(d.seq * c, 1.0));
        b.run(move |t| {
            embedding::EmbeddingFwd {
                out: t[out],
                tokens: t[tok],
                wte: t[wte],
                wpe: t[wpe],
                batch: d.batch,
                seq: d.seq,
                channels: c,
            }
            .into()
        });
        b.compare(&[out], tol_for(2));
    }

    pub fn embedding_bwd(b: &mut CaseBuilder, d: Dims) {
        let (n, c) = (d.batch * d.seq, d.channels);
        let (dwte, dwpe) = (b.random(d.vocab * c, 1.0), b.random(d.seq * c, 1.0));
        let dout = b.random(n * c, 1.0);
        // Few distinct ids, so rows collide and the scatter must add.
        let tok = b.tokens(n, d.vocab.min(5));
        b.run(move |t| {
            embedding::EmbeddingBwd {
                dwte: t[dwte],
                dwpe: t[dwpe],
                dout: t[dout],
                tokens: t[tok],
                batch: d.batch,
                seq: d.seq,
                channels: c,
            }
            .into()
        });
        b.compare(&[dwte, dwpe], tol_for(n));
    }

    /// The tensors of a LayerNorm forward: rows offset from zero, weights
    /// near one.
    #[derive(Clone, Copy)]
    struct LayernormCase {
        out: TensorId,
        mean: TensorId,
        rstd: TensorId,
        x: TensorId,
        w: TensorId,
        bias: TensorId,
        rows: usize,
        channels: usize,
    }

    impl LayernormCase {
        fn new(b: &mut CaseBuilder, d: Dims) -> Self {
            let (n, c) = (d.batch * d.seq, d.channels);
            let (out, mean, rstd) = (b.random(n * c, 1.0), b.random(n, 1.0), b.random(n, 1.0));
            let x = b.values(n * c, 2.0, 0.5);
            let w = b.values(c, 0.2, 1.0);
            LayernormCase {
                out,
                mean,
                rstd,
                x: b.floats(x),
                w: b.floats(w),
                bias: b.random(c, 0.2),
                rows: n,
                channels: c,
            }
        }

        fn fwd(&self, t: &Bound) -> Op {
            layernorm::LayernormFwd {
                out: t[self.out],
                mean: t[self.mean],
                rstd: t[self.rstd],
                inp: t[self.x],
                weight: t[self.w],
                bias: t[self.bias],
                rows: self.rows,
                channels: self.channels,
            }
            .into()
        }
    }

    pub fn layernorm_fwd(b: &mut CaseBuilder, d: Dims) {
        let ln = LayernormCase::new(b, d);
        b.run(move |t| ln.fwd(t));
        b.compare(&[ln.out, ln.mean, ln.rstd], tol_for(d.channels));
    }

    pub fn layernorm_bwd(b: &mut CaseBuilder, d: Dims) {
        let (n, c) = (d.batch * d.seq, d.channels);
        let ln = LayernormCase::new(b, d);
        // mean and rstd come from the reference forward.
        b.prepare(move |t| ln.fwd(t), &[ln.mean, ln.rstd]);
        let (dx, dw, db, dy) = (
            b.random(n * c, 1.0),
            b.random(c, 1.0),
            b.random(c, 1.0),
            b.random(n * c, 1.0),
        );
        b.run(move |t| {
            layernorm::LayernormBwd {
                dinp: t[dx],
                dweight: Some(t[dw]),
                dbias: Some(t[db]),
                dout: t[dy],
                inp: t[ln.x],
                weight: t[ln.w],
                mean: t[ln.mean],
                rstd: t[ln.rstd],
                rows: n,
                channels: c,
            }
            .into()
        });
        b.compare(&[dx, dw, db], tol_for(c.max(n)));
    }

    /// rows x in -> out, with shapes that fit no tile: (n, c+1) -> 3c-1.
    fn matmul_dims(d: Dims) -> (usize, usize, usize) {
        (d.batch * d.seq, d.channels + 1, 3 * d.channels - 1)
    }

    pub fn matmul_fwd(b: &mut CaseBuilder, d: Dims) {
        let (n, ic, oc) = matmul_dims(d);
        let out = b.random(n * oc, 1.0);
        let (x, w, bias) = (
            b.random(n * ic, 1.0),
            b.random(oc * ic, 0.1),
            b.random(oc, 1.0),
        );
        let out2 = b.random(n * oc, 1.0);
        for (out, bias) in [(out, Some(bias)), (out2, None)] {
            b.run(move |t| {
                matmul::MatmulFwd {
                    out: t[out],
                    inp: t[x],
                    weight: t[w],
                    bias: bias.map(|v| t[v]),
                    rows: n,
                    in_ch: ic,
                    out_ch: oc,
                }
                .into()
            });
        }
        b.compare(&[out, out2], tol_for(ic));
    }

    pub fn matmul_bwd(b: &mut CaseBuilder, d: Dims) {
        let (n, ic, oc) = matmul_dims(d);
        let (x, w, dy) = (
            b.random(n * ic, 1.0),
            b.random(oc * ic, 0.1),
            b.random(n * oc, 1.0),
        );
        let (dx, dw, db) = (
            b.random(n * ic, 1.0),
            b.random(oc * ic, 1.0),
            b.random(oc, 1.0),
        );
        // Then the frozen-block form: only dX.
        let dx2 = b.random(n * ic, 1.0);
        for (dx, dw, db) in [(dx, Some(dw), Some(db)), (dx2, None, None)] {
            b.run(move |t| {
                matmul::MatmulBwd {
                    dinp: Some(t[dx]),
                    dweight: dw.map(|v| t[v]),
                    dbias: db.map(|v| t[v]),
                    dout: t[dy],
                    inp: t[x],
                    weight: t[w],
                    rows: n,
                    in_ch: ic,
                    out_ch: oc,
                }
                .into()
            });
        }
        b.compare(&[dx, dw, db, dx2], tol_for(n.max(oc)));
    }

    /// The tensors of an attention forward, outputs filled with garbage.
    #[derive(Clone, Copy)]
    struct AttentionCase {
        qkv: TensorId,
        out: TensorId,
        att: TensorId,
        shape: AttnShape,
    }

    impl AttentionCase {
        fn new(b: &mut CaseBuilder, d: Dims) -> Self {
            let (n, c) = (d.batch * d.seq, d.channels);
            AttentionCase {
                qkv: b.random(n * 3 * c, 1.0),
                out: b.random(n * c, 1.0),
                att: b.random(d.batch * d.heads * d.seq * d.seq, 1.0),
                shape: AttnShape {
                    batch: d.batch,
                    seq: d.seq,
                    channels: c,
                    heads: d.heads,
                },
            }
        }

        fn fwd(&self, t: &Bound) -> Op {
            attention::AttentionFwd {
                out: t[self.out],
                att: t[self.att],
                qkv: t[self.qkv],
                shape: self.shape,
            }
            .into()
        }

        /// Products of head-size terms, softmax sums of up to `seq`.
        fn tol(&self) -> f64 {
            tol_for(self.shape.seq.max(self.shape.channels / self.shape.heads))
        }
    }

    pub fn attention_fwd(b: &mut CaseBuilder, d: Dims) {
        let a = AttentionCase::new(b, d);
        b.run(move |t| a.fwd(t));
        b.compare(&[a.out, a.att], a.tol());
    }

    pub fn attention_bwd(b: &mut CaseBuilder, d: Dims) {
        let a = AttentionCase::new(b, d);
        // The probabilities come from the reference forward.
        b.prepare(move |t| a.fwd(t), &[a.att]);
        let (qkv, out, att) = a.shape.lens();
        let (dqkv, scratch, dy) = (b.random(qkv, 1.0), b.random(att, 1.0), b.random(out, 1.0));
        b.run(move |t| {
            attention::AttentionBwd {
                dqkv: t[dqkv],
                scratch: t[scratch],
                dout: t[dy],
                qkv: t[a.qkv],
                att: t[a.att],
                shape: a.shape,
            }
            .into()
        });
        b.compare(&[dqkv], a.tol());
    }

    pub fn softmax_xent(b: &mut CaseBuilder, d: Dims) {
        let (n, v) = (d.batch * d.seq, d.vocab);
        let logits = b.values(n * v, 3.0, 0.0);
        let logits = b.floats(logits);
        let mut ids = b.ids(n, v);
        ids[n / 2] = u32::MAX; // one ignored row
        let tgt = b.tensor(Init::U32(ids));
        let (losses, dlogits) = (b.random(n, 1.0), b.random(n * v, 1.0));
        let losses2 = b.random(n, 1.0);
        // Into a separate gradient, then in place over the logits.
        for (losses, dlogits) in [(losses, dlogits), (losses2, logits)] {
            b.run(move |t| {
                loss::SoftmaxXent {
                    losses: t[losses],
                    dlogits: Some(t[dlogits]),
                    logits: t[logits],
                    targets: t[tgt],
                    rows: n,
                    vocab: v,
                    ignore_index: u32::MAX,
                    grad_scale: 0.25,
                }
                .into()
            });
        }
        b.compare(&[losses, dlogits, losses2, logits], tol_for(v));
    }

    pub fn adamw(b: &mut CaseBuilder, d: Dims) {
        let len = d.channels * d.channels + 5;
        let (p, g, m) = (b.random(len, 0.5), b.random(len, 0.1), b.random(len, 0.01));
        let v: Vec<f32> = b.values(len, 1e-3, 0.0).iter().map(|x| x * x).collect();
        let v = b.floats(v);
        let hp = AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 7,
            grad_scale: 0.5,
        };
        b.run(move |t| {
            optimizer::Adamw {
                params: t[p],
                grads: t[g],
                m: t[m],
                v: t[v],
                hp,
            }
            .into()
        });
        b.compare(&[p, m, v], 1e-5);
    }

    pub fn sum_squares(b: &mut CaseBuilder, d: Dims) {
        let acc = b.floats(vec![1.5]);
        let x = b.random(odd_len(d), 1.0);
        b.run(move |t| {
            optimizer::SumSquares {
                acc: t[acc],
                x: t[x],
            }
            .into()
        });
        b.compare(&[acc], tol_for(odd_len(d)));
    }
}
