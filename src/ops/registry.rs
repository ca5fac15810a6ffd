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

use super::case::{tol_bf16, tol_for, Bound, CaseBuilder, Dims, Init, TensorId, Word, BF16_UNIT};
use super::Contract;
use super::{activation, attention, elementwise, embedding, layernorm, loss, matmul, optimizer};
use crate::mem::DType;
use anyhow::Result;

/// Calls `$callback! { family::Struct => case, ... }` with every op.
macro_rules! for_each_op {
    ($callback:ident) => {
        $callback! {
            elementwise::Fill => cases::fill,
            elementwise::CopyView => cases::copy,
            elementwise::Cast => cases::cast,
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
            matmul::MatmulGeluFwd => cases::matmul_gelu_fwd,
            matmul::MatmulBwd => cases::matmul_bwd,
            attention::AttentionFwd => cases::attention_fwd,
            attention::AttentionBwd => cases::attention_bwd,
            attention::FlashAttentionFwd => cases::flash_attention_fwd,
            attention::FlashAttentionBwd => cases::flash_attention_bwd,
            loss::SoftmaxXent => cases::softmax_xent,
            optimizer::Adamw => cases::adamw,
            optimizer::AdamwMulti => cases::adamw_multi,
            optimizer::SumSquares => cases::sum_squares,
            optimizer::SumScaled => cases::sum_scaled,
            optimizer::FinishStep => cases::finish_step,
        }
    };
}
pub(crate) use for_each_op;

/// One registry entry.
pub struct Entry {
    pub name: &'static str,
    /// The `ops/` module (and `cpu/`, `cuda/ops/` file) of the op.
    pub family: &'static str,
    /// The compute dtypes the op supports (`Contract::FLOATS`); the
    /// conformance harness runs every one.
    pub dtypes: &'static [DType],
    /// Builds the op's conformance case at the given sizes, for the
    /// builder's compute dtype.
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
                dtypes: <$family::$op as Contract>::FLOATS,
                case: $case,
            },)*
        ];
    };
}
for_each_op!(define_ops);

/// The conformance case of every op: random inputs at the given sizes (none
/// a multiple of a kernel's tile), the outputs to compare and the tolerance
/// of each (see `crate::conformance`). Outputs and gradients start from
/// random values, so the `+=` contract is checked too.
///
/// fp32 tolerances are [`tol_for`] of the reduction length. A bf16 output
/// rounded once from an fp32 value both backends compute from the same bf16
/// inputs gets [`CaseBuilder::tol_out`] of that (one rounding on each side,
/// see `case::tol_bf16`). Where a rounded bf16 value feeds further
/// arithmetic (GELU of a product, attention's chain of products and
/// softmax), the case bounds the two backends' difference element by
/// element from its own inputs (see `bounds`).
mod cases {
    use super::*;
    use crate::ops::attention::{exact, AttnDropout, AttnShape};
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
        // 0.375 is exact in both dtypes.
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

    pub fn cast(b: &mut CaseBuilder, d: Dims) {
        // The destination has the case's dtype, the source the other one.
        let out = b.random(odd_len(d), 1.0);
        let values = b.values(odd_len(d), 3.0, 0.0);
        let x = if b.bf16() {
            b.floats_f32(values)
        } else {
            b.tensor(Init::BF16(values))
        };
        b.run(move |t| {
            elementwise::Cast {
                dst: t[out],
                src: t[x],
            }
            .into()
        });
        // Widening is exact; narrowing rounds the same f32 to nearest even
        // on both sides.
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
        let tol = b.tol_out(tol_for(1));
        b.compare(&[out, x], tol);
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
        let tol = b.tol_out(tol_for(1));
        b.compare(&[dst], tol);
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
        let tol = b.tol_out(1e-5);
        b.compare(&[out], tol);
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
        let tol = b.tol_out(1e-5);
        b.compare(&[dx], tol);
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
        let tol = b.tol_out(GELU_ERF_TOL);
        b.compare(&[out], tol);
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
        let tol = b.tol_out(GELU_ERF_TOL);
        b.compare(&[dx], tol);
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
        let tol = b.tol_out(1e-6);
        b.compare(&[out], tol);
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
        let tol = b.tol_out(1e-6);
        b.compare(&[dx], tol);
    }

    pub fn embedding_fwd(b: &mut CaseBuilder, d: Dims) {
        let (n, c) = (d.batch * d.seq, d.channels);
        let tok = b.tokens(n, d.vocab);
        let (wte, wpe) = (b.random(d.vocab * c, 1.0), b.random(d.seq * c, 1.0));
        let token_type = b.random(c, 1.0);
        // GPT-2's (no token type), then BERT's.
        let (out, out2) = (b.random(n * c, 1.0), b.random(n * c, 1.0));
        for (out, token_type) in [(out, None), (out2, Some(token_type))] {
            b.run(move |t| {
                embedding::EmbeddingFwd {
                    out: t[out],
                    tokens: t[tok],
                    wte: t[wte],
                    wpe: t[wpe],
                    token_type: token_type.map(|v| t[v]),
                    batch: d.batch,
                    seq: d.seq,
                    channels: c,
                }
                .into()
            });
        }
        let tol = b.tol_out(tol_for(3));
        b.compare(&[out, out2], tol);
    }

    pub fn embedding_bwd(b: &mut CaseBuilder, d: Dims) {
        let (n, c) = (d.batch * d.seq, d.channels);
        // The gradients are fp32 in every precision; `dout` is the case's dtype.
        let (dwte, dwpe) = (b.random_f32(d.vocab * c, 1.0), b.random_f32(d.seq * c, 1.0));
        let dtoken_type = b.random_f32(c, 1.0);
        let dout = b.random(n * c, 1.0);
        // Few distinct ids, so rows collide and the scatter must add.
        let tok = b.tokens(n, d.vocab.min(5));
        // Twice, the second time with BERT's token-type row.
        for dtoken_type in [None, Some(dtoken_type)] {
            b.run(move |t| {
                embedding::EmbeddingBwd {
                    dwte: t[dwte],
                    dwpe: t[dwpe],
                    dtoken_type: dtoken_type.map(|v| t[v]),
                    dout: t[dout],
                    tokens: t[tok],
                    batch: d.batch,
                    seq: d.seq,
                    channels: c,
                }
                .into()
            });
        }
        // fp32 sums of the same bf16 values: no rounding to bf16 anywhere.
        b.compare(&[dwte, dwpe, dtoken_type], tol_for(n));
    }

    /// The tensors of a LayerNorm forward: rows offset from zero, weights
    /// near one. Statistics are fp32 in every precision.
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
            let (out, mean, rstd) = (
                b.random(n * c, 1.0),
                b.random_f32(n, 1.0),
                b.random_f32(n, 1.0),
            );
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
                // Large enough to change every output: a kernel that does
                // not use the epsilon it is given fails.
                eps: 0.25,
            }
            .into()
        }
    }

    pub fn layernorm_fwd(b: &mut CaseBuilder, d: Dims) {
        let ln = LayernormCase::new(b, d);
        b.run(move |t| ln.fwd(t));
        // Statistics in fp32 from the same inputs; the output rounded once.
        b.compare(&[ln.mean, ln.rstd], tol_for(d.channels));
        let tol = b.tol_out(tol_for(d.channels));
        b.compare(&[ln.out], tol);
    }

    pub fn layernorm_bwd(b: &mut CaseBuilder, d: Dims) {
        let (n, c) = (d.batch * d.seq, d.channels);
        let ln = LayernormCase::new(b, d);
        // mean and rstd come from the reference forward.
        b.prepare(move |t| ln.fwd(t), &[ln.mean, ln.rstd]);
        let (dx, dw, db, dy) = (
            b.random(n * c, 1.0),
            b.random_f32(c, 1.0),
            b.random_f32(c, 1.0),
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
        let tol = tol_for(c.max(n));
        b.compare(&[dw, db], tol);
        let tol = b.tol_out(tol);
        b.compare(&[dx], tol);
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
        let tol = b.tol_out(tol_for(ic));
        b.compare(&[out, out2], tol);
    }

    pub fn matmul_gelu_fwd(b: &mut CaseBuilder, d: Dims) {
        let (n, ic, oc) = matmul_dims(d);
        let (out, pre) = (b.random(n * oc, 1.0), b.random(n * oc, 1.0));
        let (xv, wv, bv) = (
            b.values(n * ic, 1.0, 0.0),
            b.values(oc * ic, 0.1, 0.0),
            b.values(oc, 1.0, 0.0),
        );
        let gelu_bound = bounds::matmul_gelu(b, &xv, &wv, &bv, [n, ic, oc]);
        let (x, w, bias) = (b.floats(xv), b.floats(wv), b.floats(bv));
        b.run(move |t| {
            matmul::MatmulGeluFwd {
                out: t[out],
                pre: t[pre],
                inp: t[x],
                weight: t[w],
                bias: Some(t[bias]),
                rows: n,
                in_ch: ic,
                out_ch: oc,
            }
            .into()
        });
        let tol = b.tol_out(tol_for(ic));
        b.compare(&[pre], tol);
        b.compare_abs(&[out], gelu_bound);
    }

    pub fn matmul_bwd(b: &mut CaseBuilder, d: Dims) {
        let (n, ic, oc) = matmul_dims(d);
        let (x, w, dy) = (
            b.random(n * ic, 1.0),
            b.random(oc * ic, 0.1),
            b.random(n * oc, 1.0),
        );
        // dinp in the case's dtype; the weight and bias gradients fp32.
        let (dx, dw, db) = (
            b.random(n * ic, 1.0),
            b.random_f32(oc * ic, 1.0),
            b.random_f32(oc, 1.0),
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
        let tol = tol_for(n.max(oc));
        b.compare(&[dw, db], tol);
        let tol = b.tol_out(tol);
        b.compare(&[dx, dx2], tol);
    }

    /// The tensors of an attention forward, outputs filled with garbage.
    #[derive(Clone, Copy)]
    struct AttentionCase {
        qkv: TensorId,
        out: TensorId,
        att: TensorId,
        dropped: TensorId,
        shape: AttnShape,
    }

    /// The attention dropout of the cases: p = 0.3 at a head offset past 2^32.
    const ATTN_DROPOUT: AttnDropout = AttnDropout {
        p: 0.3,
        seed: 21,
        offset: (1 << 32) - 3,
    };

    impl AttentionCase {
        /// `qkv` values are returned too, for the bf16 bounds. In bf16 they
        /// are scaled by 0.5, so that scores stay near 1 in magnitude and
        /// the bounds (which grow with the scores) stay tight.
        fn new(b: &mut CaseBuilder, d: Dims) -> (Self, Vec<f32>) {
            let (n, c) = (d.batch * d.seq, d.channels);
            let att = d.batch * d.heads * d.seq * d.seq;
            let scale = if b.bf16() { 0.5 } else { 1.0 };
            let qkv = b.values(n * 3 * c, scale, 0.0);
            let case = AttentionCase {
                qkv: b.floats(qkv.clone()),
                out: b.random(n * c, 1.0),
                att: b.random(att, 1.0),
                dropped: b.random(att, 1.0),
                shape: AttnShape {
                    batch: d.batch,
                    seq: d.seq,
                    channels: c,
                    heads: d.heads,
                },
            };
            (case, qkv)
        }

        fn fwd(&self, t: &Bound, dropout: Option<AttnDropout>) -> Op {
            attention::AttentionFwd {
                out: t[self.out],
                att: t[self.att],
                dropped: dropout.map(|_| t[self.dropped]),
                qkv: t[self.qkv],
                shape: self.shape,
                dropout,
            }
            .into()
        }

        /// fp32: products of head-size terms, softmax sums of up to `seq`.
        fn tol(&self) -> f64 {
            tol_for(self.shape.seq.max(self.shape.channels / self.shape.heads))
        }
    }

    /// fp32: with and without dropout. bf16: without dropout, within the
    /// bounds of `bounds` (which do not model dropout; the bf16 dropout
    /// kernels are the f32 ones' template, checked in f32 here).
    pub fn attention_fwd(b: &mut CaseBuilder, d: Dims) {
        let (a, qkv) = AttentionCase::new(b, d);
        b.run(move |t| a.fwd(t, None));
        if !b.bf16() {
            let (dropped, _) = AttentionCase::new(b, d);
            b.run(move |t| dropped.fwd(t, Some(ATTN_DROPOUT)));
            b.compare(&[dropped.out, dropped.att], dropped.tol());
        }
        if b.bf16() {
            let q = b.stored(&qkv);
            let (att, out) = bounds::attention_fwd(&q, a.shape);
            b.compare_abs(&[a.att], att);
            b.compare_abs(&[a.out], out);
        } else {
            b.compare(&[a.out, a.att], a.tol());
        }
    }

    /// As [`attention_fwd`]: dropout in fp32 only.
    pub fn attention_bwd(b: &mut CaseBuilder, d: Dims) {
        let dropouts: &[Option<AttnDropout>] = if b.bf16() {
            &[None]
        } else {
            &[None, Some(ATTN_DROPOUT)]
        };
        for &dropout in dropouts {
            attention_bwd_case(b, d, dropout);
        }
    }

    fn attention_bwd_case(b: &mut CaseBuilder, d: Dims, dropout: Option<AttnDropout>) {
        let (a, qkv) = AttentionCase::new(b, d);
        // The probabilities come from the reference forward.
        b.prepare(move |t| a.fwd(t, dropout), &[a.att]);
        let (qkv_len, out_len, att_len) = a.shape.lens();
        let dqkv_old = b.values(qkv_len, 1.0, 0.0);
        let dy_values = b.values(out_len, 1.0, 0.0);
        let bound = b.bf16().then(|| {
            let (q, dy, old) = (b.stored(&qkv), b.stored(&dy_values), b.stored(&dqkv_old));
            bounds::attention_bwd(&q, &dy, &old, a.shape)
        });
        let (dqkv, dy) = (b.floats(dqkv_old), b.floats(dy_values));
        let scratch = b.random(att_len, 1.0);
        b.run(move |t| {
            attention::AttentionBwd {
                dqkv: t[dqkv],
                scratch: t[scratch],
                dout: t[dy],
                qkv: t[a.qkv],
                att: t[a.att],
                shape: a.shape,
                dropout,
            }
            .into()
        });
        match bound {
            Some(bound) => b.compare_abs(&[dqkv], bound),
            None => b.compare(&[dqkv], a.tol()),
        }
    }

    /// The shape of the flash cases, and bf16 inputs (rounded on the host,
    /// so the tolerance below sees exactly what both backends see).
    fn flash_inputs(b: &mut CaseBuilder, d: Dims) -> (AttnShape, Vec<f64>, TensorId) {
        let shape = AttnShape {
            batch: d.batch,
            seq: d.seq,
            channels: d.channels,
            heads: d.heads,
        };
        let qkv = bf16_values(b, shape.lens().0, 1.0);
        let id = b.floats(qkv.clone());
        (shape, qkv.iter().map(|&x| x as f64).collect(), id)
    }

    /// `scale * N(0, 1)` values that bf16 holds exactly.
    fn bf16_values(b: &mut CaseBuilder, len: usize, scale: f64) -> Vec<f32> {
        let v = b.values(len, scale, 0.0);
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect()
    }

    /// The harness's normalised error bound for one tensor, from each
    /// element's exact value and its allowed error ([`exact::Bounds`]): the
    /// largest allowed error over the largest reference value (which is the
    /// exact one rounded, hence the `1 - u_b`).
    fn normwise(elems: impl Iterator<Item = (f64, f64)>) -> f64 {
        let (worst, top) = elems.fold((0.0f64, 0.0f64), |(w, t), (x, bound)| {
            (w.max(bound), t.max(x.abs()))
        });
        worst / (top * (1.0 - exact::U_B)).max(1e-3)
    }

    /// Forward with and without dropout: `out` and `lse` within the bounds
    /// derived in [`exact`].
    pub fn flash_attention_fwd(b: &mut CaseBuilder, d: Dims) {
        for dropout in [None, Some(ATTN_DROPOUT)] {
            let (shape, qkv, qkv_id) = flash_inputs(b, d);
            let out = b.floats(vec![3.0; shape.lens().1]);
            let lse = b.random_f32(shape.rows(), 1.0);
            b.run(move |t| {
                attention::FlashAttentionFwd {
                    out: t[out],
                    lse: t[lse],
                    qkv: t[qkv_id],
                    shape,
                    dropout,
                }
                .into()
            });
            let x = exact::forward(&qkv, shape, dropout);
            let bound = exact::Bounds::new(shape, x.score_mag);
            let out_err = (x.out.iter().zip(&x.out_mag)).map(|(&v, &m)| (v, bound.bf16(v, m, m)));
            let lse_err = x.lse.iter().map(|&v| (v, bound.lse(v)));
            b.compare(&[out], normwise(out_err));
            b.compare(&[lse], normwise(lse_err));
        }
    }

    /// Backward with and without dropout, from the rounded exact forward:
    /// `dqkv` (starting at small random values, so `+=` is checked while the
    /// gradient dominates) within the bounds derived in [`exact`].
    pub fn flash_attention_bwd(b: &mut CaseBuilder, d: Dims) {
        for dropout in [None, Some(ATTN_DROPOUT)] {
            let (shape, qkv, qkv_id) = flash_inputs(b, d);
            let (_, out_len, _) = shape.lens();
            let fwd = exact::forward(&qkv, shape, dropout);
            let out: Vec<f32> = fwd.out.iter().map(|&x| x as f32).collect();
            let lse: Vec<f32> = fwd.lse.iter().map(|&x| x as f32).collect();
            let dout = bf16_values(b, out_len, 1.0);
            let old = bf16_values(b, qkv.len(), 0.1);
            let (out_id, lse_id) = (b.floats(out.clone()), b.floats_f32(lse.clone()));
            let (dout_id, dqkv) = (b.floats(dout.clone()), b.floats(old.clone()));
            let delta = b.random_f32(shape.rows(), 1.0);
            b.run(move |t| {
                attention::FlashAttentionBwd {
                    dqkv: t[dqkv],
                    delta: t[delta],
                    dout: t[dout_id],
                    out: t[out_id],
                    lse: t[lse_id],
                    qkv: t[qkv_id],
                    shape,
                    dropout,
                }
                .into()
            });
            let wide = |v: &[f32]| {
                v.iter()
                    .map(|&x| half::bf16::from_f32(x).to_f64())
                    .collect::<Vec<_>>()
            };
            let lse: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
            let g = exact::backward(&wide(&dout), &wide(&out), &lse, &qkv, shape, dropout);
            let bound = exact::Bounds::new(shape, g.score_mag);
            let err = (0..qkv.len()).map(|i| {
                let x = old[i] as f64 + g.dqkv[i];
                (x, bound.bf16(x, g.mag[i], g.fine_mag[i]))
            });
            b.compare(&[dqkv], normwise(err));
        }
    }

    pub fn softmax_xent(b: &mut CaseBuilder, d: Dims) {
        // Rows padded by 5 columns, as the model pads its vocabulary: the
        // padding must stay out of the softmax and get a zero gradient.
        let (n, v, vp) = (d.batch * d.seq, d.vocab, d.vocab + 5);
        let logits = b.values(n * vp, 3.0, 0.0);
        let logits = b.floats(logits);
        let mut ids = b.ids(n, v);
        ids[n / 2] = u32::MAX; // one ignored row
        let tgt = b.tensor(Init::U32(ids));
        // Losses are fp32 in every precision, the gradient the logits' dtype.
        let (losses, dlogits) = (b.random_f32(n, 1.0), b.random(n * vp, 1.0));
        let losses2 = b.random_f32(n, 1.0);
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
                    padded_vocab: vp,
                    ignore_index: u32::MAX,
                    grad_scale: 0.25,
                }
                .into()
            });
        }
        // The losses: fp32 from the same inputs, a sum over the vocabulary.
        b.compare(&[losses, losses2], tol_for(v));
        let tol = b.tol_out(tol_for(v));
        b.compare(&[dlogits, logits], tol);
    }

    /// The hyper-parameters of both AdamW cases: a step past the first,
    /// with decay.
    const ADAMW_CASE: AdamWStep = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 7,
    };

    pub fn adamw(b: &mut CaseBuilder, d: Dims) {
        // fp32 only: master weights and moments. `copy` is the bf16 compute
        // copy of the updated weights.
        let len = d.channels * d.channels + 5;
        let (p, g, m) = (b.random(len, 0.5), b.random(len, 0.1), b.random(len, 0.01));
        let v: Vec<f32> = b.values(len, 1e-3, 0.0).iter().map(|x| x * x).collect();
        let v = b.floats(v);
        let copy_values = b.values(len, 1.0, 0.0);
        let copy = b.tensor(Init::BF16(copy_values));
        let hp = ADAMW_CASE;
        // A clip scale of 0.5, not skipped.
        let stats = b.floats_f32(optimizer::stat::with_scale(0.5, false));
        b.run(move |t| {
            optimizer::Adamw {
                params: t[p],
                grads: t[g],
                m: t[m],
                v: t[v],
                copy: Some(t[copy]),
                stats: t[stats],
                hp,
            }
            .into()
        });
        b.compare(&[p, m, v], 1e-5);
        // The copy is the new weights rounded once on each side.
        b.compare(&[copy], tol_bf16(1e-5));
    }

    pub fn adamw_multi(b: &mut CaseBuilder, d: Dims) {
        // Three tensors of lengths that are not multiples of the block:
        // one decaying with a bf16 copy, one not decaying without, and one
        // of a single element.
        let lens = [d.channels * d.channels + 5, 3 * d.channels + 1, 1];
        let mut words = Vec::new();
        let mut outputs = Vec::new();
        for (k, &len) in lens.iter().enumerate() {
            let (p, g, m) = (b.random(len, 0.5), b.random(len, 0.1), b.random(len, 0.01));
            let v: Vec<f32> = b.values(len, 1e-3, 0.0).iter().map(|x| x * x).collect();
            let v = b.floats(v);
            let copy = (k == 0).then(|| {
                let c = b.values(len, 1.0, 0.0);
                b.tensor(Init::BF16(c))
            });
            let decays = k == 0;
            let len_word = len as u64 | if decays { optimizer::DECAYS_BIT } else { 0 };
            words.extend([p, g, m, v].map(Word::Address));
            words.push(copy.map_or(Word::Value(0), Word::Address));
            words.push(Word::Value(len_word));
            outputs.push((vec![p, m, v], copy));
        }
        let list = b.tensor(Init::Words(words));
        let stats = b.floats_f32(optimizer::stat::for_update(0.5, false, &ADAMW_CASE));
        let betas = ADAMW_CASE.betas();
        let max_len = lens[0];
        b.run(move |t| {
            optimizer::AdamwMulti {
                list: t[list],
                count: lens.len(),
                max_len,
                stats: t[stats],
                betas,
            }
            .into()
        });
        for (fp32, copy) in outputs {
            b.compare(&fp32, 1e-5);
            if let Some(c) = copy {
                b.compare(&[c], tol_bf16(1e-5));
            }
        }
    }

    pub fn sum_squares(b: &mut CaseBuilder, d: Dims) {
        let acc = b.floats(vec![1.5]);
        let scratch = b.floats_f32(vec![0.0; optimizer::SUM_SCRATCH_LEN]);
        let x = b.random(odd_len(d), 1.0);
        b.run(move |t| {
            optimizer::SumSquares {
                acc: t[acc],
                scratch: t[scratch],
                x: t[x],
            }
            .into()
        });
        b.compare(&[acc], tol_for(odd_len(d)));
    }

    pub fn sum_scaled(b: &mut CaseBuilder, d: Dims) {
        let acc = b.floats(vec![1.5]);
        let scratch = b.floats_f32(vec![0.0; optimizer::SUM_SCRATCH_LEN]);
        let x = b.random(odd_len(d), 1.0);
        b.run(move |t| {
            optimizer::SumScaled {
                acc: t[acc],
                scratch: t[scratch],
                x: t[x],
                scale: 0.37,
            }
            .into()
        });
        b.compare(&[acc], tol_for(odd_len(d)));
    }

    pub fn finish_step(b: &mut CaseBuilder, _: Dims) {
        // A finite step that is clipped, after two skipped ones; the
        // skipping path is tested in the training tests (tests/train.rs).
        let mut s = vec![0.0; optimizer::stat::LEN];
        s[optimizer::stat::LOSS] = 3.25;
        s[optimizer::stat::NORM_SQ] = 6.5;
        s[optimizer::stat::SKIPPED] = 2.0;
        s[optimizer::stat::SKIPPED_IN_A_ROW] = 2.0;
        let stats = b.floats_f32(s);
        b.run(move |t| {
            optimizer::FinishStep {
                stats: t[stats],
                max_norm: 1.0,
            }
            .into()
        });
        b.compare(&[stats], 1e-7);
    }

    /// Element-by-element bounds on how far the two backends' results may
    /// be apart, where a value rounded to bf16 (or a GELU) feeds further
    /// arithmetic. Each backend is bounded against the exact result on the
    /// same stored inputs, computed here in f64; the two are at most twice
    /// that apart. Ingredients:
    /// - `u` = 2^-8, the unit roundoff of bf16; `uf` = 2^-24, of fp32.
    /// - An fp32 sum of `n` products of bf16 values (exact in fp32), in any
    ///   order, with or without fused multiply-adds, is within
    ///   `gamma(n) sum |a b|` of the exact sum, `gamma(n) = n uf / (1 - n uf)`
    ///   (Higham, Accuracy and Stability, 3.1).
    /// - Rounding to bf16 moves a value by at most `u` of its magnitude.
    mod bounds {
        use super::*;

        const U: f64 = BF16_UNIT;
        const UF: f64 = 1.0 / 16_777_216.0;

        fn gamma(n: usize) -> f64 {
            let nu = n as f64 * UF;
            nu / (1.0 - nu)
        }

        /// `|gelu'| <= 1.13` everywhere (tanh form).
        const GELU_LIPSCHITZ: f64 = 1.13;
        const GELU_S: f64 = 0.797_884_560_802_865_4;

        fn gelu(x: f64) -> f64 {
            0.5 * x * (1.0 + (GELU_S * (x + 0.044_715 * x * x * x)).tanh())
        }

        /// The fp32 error of evaluating the GELU formula at `x`: six
        /// roundings in the tanh argument, 4 uf of absolute error for tanh
        /// (tanhf, or the CPU's `math::tanh`), two for the last products.
        fn gelu_eval_error(x: f64) -> f64 {
            let a = x.abs();
            let arg = 6.0 * UF * GELU_S * (a + 0.044_715 * a.powi(3));
            0.5 * a * (arg + 4.0 * UF) + 2.0 * UF * gelu(x).abs()
        }

        /// `matmul_gelu_fwd`'s `out = gelu(v)`, `v` the fp32 value of
        /// `x w^T + bias` (sum of `ic + 1` terms): each backend's `v` is
        /// within `sigma = gamma(ic + 1) (sum |x w| + |bias|)` of the exact
        /// `V`; GELU moves that by at most 1.13 sigma, its own evaluation
        /// adds `gelu_eval_error`, and in bf16 the output is rounded once
        /// (`u` of its magnitude). The largest difference is twice the worst
        /// per-element bound.
        pub fn matmul_gelu(
            b: &CaseBuilder,
            x: &[f32],
            w: &[f32],
            bias: &[f32],
            [n, ic, oc]: [usize; 3],
        ) -> f64 {
            let (x, w, bias) = (b.stored(x), b.stored(w), b.stored(bias));
            let u = if b.bf16() { U } else { 0.0 };
            let mut worst = 0.0f64;
            for i in 0..n {
                for j in 0..oc {
                    let (mut v, mut mag) = (bias[j], bias[j].abs());
                    for k in 0..ic {
                        let p = x[i * ic + k] * w[j * ic + k];
                        v += p;
                        mag += p.abs();
                    }
                    let sigma = gamma(ic + 1) * mag;
                    let off = GELU_LIPSCHITZ * sigma + gelu_eval_error(v.abs() + sigma);
                    worst = worst.max(off + u * (gelu(v).abs() + off));
                }
            }
            2.0 * worst
        }

        /// The exact forward of one head in f64: scaled scores' magnitudes
        /// `a[i][j] = scale sum |q k|`, and the probabilities `p[i][j]`
        /// (`j <= i`).
        struct Head {
            p: Vec<f64>,
            /// Per row: the bound `phi` on `|P_side / P - 1|`.
            phi: Vec<f64>,
        }

        /// Indexing of `qkv[B, T, 3C]` (part 0 q, 1 k, 2 v) and `[B, T, C]`.
        struct Geom {
            t: usize,
            c: usize,
            hs: usize,
            scale: f64,
        }

        impl Geom {
            fn new(s: AttnShape) -> Self {
                let hs = s.channels / s.heads;
                Geom {
                    t: s.seq,
                    c: s.channels,
                    hs,
                    scale: 1.0 / (hs as f64).sqrt(),
                }
            }
            fn qkv(&self, b: usize, part: usize, i: usize, h: usize, dd: usize) -> usize {
                (b * self.t + i) * 3 * self.c + part * self.c + h * self.hs + dd
            }
            fn out(&self, b: usize, i: usize, h: usize, dd: usize) -> usize {
                (b * self.t + i) * self.c + h * self.hs + dd
            }
        }

        /// Scores rounded to bf16: each backend's fp32 score (a sum of `hs`
        /// products, then times the scale) is within `sigma = scale
        /// gamma(hs + 1) sum |q k|` of the exact `S`, and after rounding
        /// within `eps = u (|S| + sigma) + sigma`. The softmax of scores
        /// each off by at most `eps_i` (the row's largest) is off by a factor
        /// in `[e^(-2 eps_i), e^(2 eps_i)]`; its fp32 evaluation (exp within
        /// a few ulp, a sum of up to `T` terms, a product) by a factor within
        /// `(T + 8) uf`, and the rounding of the probability by `u`. So each
        /// backend's probability is within `phi_i P` of the exact `P`, with
        /// `phi_i = e^(2 eps_i) (1 + r) - 1`, `r = u + (T + 8) uf`.
        fn head(q: &[f64], g: &Geom, b: usize, h: usize) -> Head {
            let t = g.t;
            let mut p = vec![0.0; t * t];
            let mut phi = vec![0.0; t];
            let r = U + (t + 8) as f64 * UF;
            for i in 0..t {
                let mut eps_i = 0.0f64;
                for j in 0..=i {
                    let (mut s, mut mag) = (0.0, 0.0);
                    for dd in 0..g.hs {
                        let prod = q[g.qkv(b, 0, i, h, dd)] * q[g.qkv(b, 1, j, h, dd)];
                        s += prod;
                        mag += prod.abs();
                    }
                    let (s, sigma) = (s * g.scale, g.scale * gamma(g.hs + 1) * mag);
                    eps_i = eps_i.max(U * (s.abs() + sigma) + sigma);
                    p[i * t + j] = s;
                }
                let row = &mut p[i * t..i * t + i + 1];
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|s| (s - max).exp()).sum();
                for s in row.iter_mut() {
                    *s = (*s - max).exp() / sum;
                }
                phi[i] = (2.0 * eps_i).exp() * (1.0 + r) - 1.0;
            }
            Head { p, phi }
        }

        /// (att, out) bounds of `attention_fwd` in bf16. `att`: each backend
        /// within `phi_i P_ij` of `P_ij` (see [`head`]). `out = round(sum_j
        /// P_side v_j)`: off by `sum_j phi_i P_ij |v_j|` through the
        /// probabilities, `gamma(T)` of `sum_j P_side |v_j|` through the fp32
        /// sum, and `u` of the result by its rounding.
        pub fn attention_fwd(qkv: &[f64], s: AttnShape) -> (f64, f64) {
            let g = Geom::new(s);
            let t = g.t;
            let (mut att, mut out) = (0.0f64, 0.0f64);
            for b in 0..s.batch {
                for h in 0..s.heads {
                    let hd = head(qkv, &g, b, h);
                    for i in 0..t {
                        let phi = hd.phi[i];
                        for j in 0..=i {
                            att = att.max(phi * hd.p[i * t + j]);
                        }
                        for dd in 0..g.hs {
                            let (mut o, mut w) = (0.0f64, 0.0f64);
                            for j in 0..=i {
                                let v = qkv[g.qkv(b, 2, j, h, dd)];
                                o += hd.p[i * t + j] * v;
                                w += hd.p[i * t + j] * v.abs();
                            }
                            let off = phi * w + gamma(t) * (1.0 + phi) * w;
                            out = out.max(off + U * (o.abs() + off));
                        }
                    }
                }
            }
            (2.0 * att, 2.0 * out)
        }

        /// The bound of `attention_bwd`'s `dqkv` in bf16. Both backends read
        /// the same probabilities `P` (the reference's, copied), at most
        /// `(1 + phi_i)` times the exact ones: `Pb`.
        /// - `dP = round(dout v^T)`: within `e1 = u (|dP| + s) + s`, `s =
        ///   gamma(hs) sum |dout v|`, of the exact product.
        /// - `rho_i = sum_j P dP` (fp32): within `e_rho = sum_j Pb e1 +
        ///   gamma(T) sum_j Pb |dP|`.
        /// - `dS = round(scale P (dP - rho))`: within `eta = scale Pb (e1 +
        ///   e_rho) (1 + 4 uf) (1 + u) + (u + 3 uf) D`, with `|dS| <= D =
        ///   scale Pb (|dP| + sum_l Pb |dP_l|)`.
        /// - `dq_i += sum_j dS k_j`, `dk_j += sum_i dS q_i`: the dS errors
        ///   weighted by `|k|` (`|q|`), `gamma(T + 1)` of the magnitudes of
        ///   the sum with the old gradient, then `u` of those for the
        ///   rounding; `dv_j += sum_i P dout_i` only the last two.
        pub fn attention_bwd(qkv: &[f64], dout: &[f64], old: &[f64], s: AttnShape) -> f64 {
            let g = Geom::new(s);
            let t = g.t;
            let mut worst = 0.0f64;
            for b in 0..s.batch {
                for h in 0..s.heads {
                    let hd = head(qkv, &g, b, h);
                    let pb = |i: usize, j: usize| hd.p[i * t + j] * (1.0 + hd.phi[i]);
                    // dP bound e1 and |dP| for the live entries.
                    let mut dp = vec![0.0; t * t];
                    let mut e1 = vec![0.0; t * t];
                    for i in 0..t {
                        for j in 0..=i {
                            let (mut x, mut mag) = (0.0, 0.0);
                            for dd in 0..g.hs {
                                let prod = dout[g.out(b, i, h, dd)] * qkv[g.qkv(b, 2, j, h, dd)];
                                x += prod;
                                mag += prod.abs();
                            }
                            let sg = gamma(g.hs) * mag;
                            dp[i * t + j] = x.abs();
                            e1[i * t + j] = U * (x.abs() + sg) + sg;
                        }
                    }
                    // eta (the dS error) and D (the |dS| bound).
                    let mut eta = vec![0.0; t * t];
                    let mut dmax = vec![0.0; t * t];
                    for i in 0..t {
                        let (mut e_rho, mut mag_rho) = (0.0, 0.0);
                        for l in 0..=i {
                            e_rho += pb(i, l) * e1[i * t + l];
                            mag_rho += pb(i, l) * dp[i * t + l];
                        }
                        e_rho += gamma(t) * mag_rho;
                        for j in 0..=i {
                            let k = i * t + j;
                            let dd = g.scale * pb(i, j) * (dp[k] + mag_rho);
                            eta[k] =
                                g.scale * pb(i, j) * (e1[k] + e_rho) * (1.0 + 4.0 * UF) * (1.0 + U)
                                    + (U + 3.0 * UF) * dd;
                            dmax[k] = dd;
                        }
                    }
                    for dd in 0..g.hs {
                        // dq_i += sum_{j <= i} dS_ij k_j
                        for i in 0..t {
                            let (mut err, mut mag) = (0.0, 0.0);
                            for j in 0..=i {
                                let k = qkv[g.qkv(b, 1, j, h, dd)].abs();
                                err += eta[i * t + j] * k;
                                mag += (dmax[i * t + j] + eta[i * t + j]) * k;
                            }
                            let mag = mag + old[g.qkv(b, 0, i, h, dd)].abs();
                            worst = worst.max(err + (gamma(t + 1) + U) * mag * (1.0 + U));
                        }
                        // dk_j += sum_{i >= j} dS_ij q_i; dv_j += sum_{i >= j} P_ij dout_i
                        for j in 0..t {
                            let (mut err, mut mag, mut vmag) = (0.0, 0.0, 0.0);
                            for i in j..t {
                                let q = qkv[g.qkv(b, 0, i, h, dd)].abs();
                                err += eta[i * t + j] * q;
                                mag += (dmax[i * t + j] + eta[i * t + j]) * q;
                                vmag += pb(i, j) * dout[g.out(b, i, h, dd)].abs();
                            }
                            let mag = mag + old[g.qkv(b, 1, j, h, dd)].abs();
                            worst = worst.max(err + (gamma(t + 1) + U) * mag * (1.0 + U));
                            let vmag = vmag + old[g.qkv(b, 2, j, h, dd)].abs();
                            worst = worst.max((gamma(t + 1) + U) * vmag * (1.0 + U));
                        }
                    }
                }
            }
            2.0 * worst
        }
    }
}
