//! Token + position (+ token-type) embeddings.

use super::check::{self, input, output, F32_BF16};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::Result;

/// `out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:] (+ token_type[:])`; the
/// vocabulary is `wte.len / channels`. Token ids must be below it: the data
/// layer validates them; the CPU also checks, a kernel writes a NaN row
/// instead. `token_type` is BERT's token-type embedding of type 0, one row
/// of `channels` added to every position (dyntie has no segment ids).
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingFwd {
    pub out: View,
    pub tokens: View,
    pub wte: View,
    pub wpe: View,
    pub token_type: Option<View>,
    pub batch: usize,
    pub seq: usize,
    pub channels: usize,
}

impl Contract for EmbeddingFwd {
    const NAME: &'static str = "embedding_fwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (n, c) = (self.batch * self.seq, self.channels);
        check::nonzero(Self::NAME, "channels", c)?;
        let vocab = self.wte.len / c;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("out", self.out, n * c),
                input("tokens", self.tokens, n).of(DType::U32),
                input("wte", self.wte, vocab * c),
                input("wpe", self.wpe, self.seq * c),
                input("token_type", self.token_type, c),
            ],
        )
    }
    fn shape(&self) -> String {
        embedding_shape(self.batch, self.seq, self.channels, self.wte.len)
    }
}

/// Scatter-adds `dout` into the rows of `dwte` (by token) and `dwpe` (by
/// position); `dtoken_type`, when given, `+=` the sum of all rows of
/// `dout`. The gradients are fp32 in every precision.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingBwd {
    pub dwte: View,
    pub dwpe: View,
    pub dtoken_type: Option<View>,
    pub dout: View,
    pub tokens: View,
    pub batch: usize,
    pub seq: usize,
    pub channels: usize,
}

impl Contract for EmbeddingBwd {
    const NAME: &'static str = "embedding_bwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (n, c) = (self.batch * self.seq, self.channels);
        check::nonzero(Self::NAME, "channels", c)?;
        let vocab = self.dwte.len / c;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("dwte", self.dwte, vocab * c).of(DType::F32),
                output("dwpe", self.dwpe, self.seq * c).of(DType::F32),
                output("dtoken_type", self.dtoken_type, c).of(DType::F32),
                input("dout", self.dout, n * c),
                input("tokens", self.tokens, n).of(DType::U32),
            ],
        )
    }
    fn shape(&self) -> String {
        embedding_shape(self.batch, self.seq, self.channels, self.dwte.len)
    }
}

fn embedding_shape(batch: usize, seq: usize, channels: usize, table: usize) -> String {
    format!("B{batch} T{seq} C{channels} V{}", table / channels.max(1))
}
