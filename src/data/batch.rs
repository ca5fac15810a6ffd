//! Token sources and batching: random training windows, exhaustive eval windows.

use super::tokfile::TokenFile;
use crate::rng::HostRng;
use anyhow::{bail, Result};
use std::sync::Arc;

/// Target id that the loss must skip (padding in the last eval window).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// One split's tokens: a memory-mapped file or a vector. Cheap to clone.
#[derive(Clone)]
pub struct TokenSource {
    name: String,
    inner: Arc<Inner>,
}

enum Inner {
    File(TokenFile),
    Memory(Vec<u32>),
}

impl std::fmt::Debug for TokenSource {
    // Not the tokens themselves: a split can hold billions.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSource({}, {} tokens)", self.name, self.len())
    }
}

impl TokenSource {
    pub fn from_file(name: &str, file: TokenFile) -> Self {
        TokenSource {
            name: name.to_string(),
            inner: Arc::new(Inner::File(file)),
        }
    }
    pub fn from_vec(name: &str, tokens: Vec<u32>) -> Self {
        TokenSource {
            name: name.to_string(),
            inner: Arc::new(Inner::Memory(tokens)),
        }
    }
    /// The split's name ("train", "valid", "test"), used in error messages.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn len(&self) -> usize {
        match &*self.inner {
            Inner::File(f) => f.len(),
            Inner::Memory(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy tokens `start..start + out.len()` into `out`.
    pub fn read_into(&self, start: usize, out: &mut [u32]) {
        match &*self.inner {
            Inner::File(f) => f.read_into(start, out),
            Inner::Memory(v) => out.copy_from_slice(&v[start..start + out.len()]),
        }
    }
    pub fn window(&self, start: usize, len: usize) -> Vec<u32> {
        let mut v = vec![0; len];
        self.read_into(start, &mut v);
        v
    }

    fn require_context(&self, context: usize) -> Result<()> {
        if context == 0 {
            bail!("context length must be at least 1");
        }
        if self.len() < context + 1 {
            bail!(
                "the {} split has {} tokens, fewer than one context window of {} + 1; \
                 use a shorter context or a larger split",
                self.name,
                self.len(),
                context
            );
        }
        Ok(())
    }
}

/// A batch of `rows` windows of `context` tokens, row-major: `targets[r][t]`
/// is the token after `inputs[r][t]`, or [`IGNORE_INDEX`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub rows: usize,
    pub context: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Batch {
    /// Targets that count in the loss (not [`IGNORE_INDEX`]).
    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
    }
}

/// Random contiguous windows of `context + 1` tokens. The whole state is the
/// RNG, so saving [`TrainBatcher::rng`] and restoring it with
/// [`TrainBatcher::set_rng`] resumes the exact same batch sequence.
#[derive(Clone, Debug)]
pub struct TrainBatcher {
    source: TokenSource,
    rows: usize,
    context: usize,
    rng: HostRng,
}

impl TrainBatcher {
    pub fn new(source: TokenSource, rows: usize, context: usize, rng: HostRng) -> Result<Self> {
        source.require_context(context)?;
        if rows == 0 {
            bail!("batch size must be at least 1");
        }
        if rows.checked_mul(context + 1).is_none() {
            bail!("a batch of {rows} windows of {context} tokens is too large to count");
        }
        Ok(TrainBatcher {
            source,
            rows,
            context,
            rng,
        })
    }

    pub fn rng(&self) -> &HostRng {
        &self.rng
    }
    pub fn set_rng(&mut self, rng: HostRng) {
        self.rng = rng;
    }

    pub fn next_batch(&mut self) -> Batch {
        let (rows, t) = (self.rows, self.context);
        let starts = (self.source.len() - t) as u64; // number of valid window starts
        let mut inputs = Vec::with_capacity(rows * t);
        let mut targets = Vec::with_capacity(rows * t);
        let mut buf = vec![0; t + 1];
        for _ in 0..rows {
            let start = self.rng.below(starts) as usize;
            self.source.read_into(start, &mut buf);
            inputs.extend_from_slice(&buf[..t]);
            targets.extend_from_slice(&buf[1..]);
        }
        Batch {
            rows,
            context: t,
            inputs,
            targets,
        }
    }
}

/// Non-overlapping windows over a whole split for evaluation: window `k`
/// has inputs `k·T .. k·T + T` and targets one further, so every token but
/// the first (which has no context) is a target exactly once. The last
/// window's missing targets are [`IGNORE_INDEX`] and its missing inputs 0.
#[derive(Clone, Debug)]
pub struct EvalWindows {
    source: TokenSource,
    context: usize,
}

impl EvalWindows {
    pub fn new(source: TokenSource, context: usize) -> Result<Self> {
        source.require_context(context)?;
        Ok(EvalWindows { source, context })
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        (self.source.len() - 1).div_ceil(self.context)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of real targets over all windows (split length - 1).
    pub fn n_targets(&self) -> usize {
        self.source.len() - 1
    }

    /// Windows `first .. first + rows` (clipped to the end) as one batch.
    pub fn batch(&self, first: usize, rows: usize) -> Batch {
        let t = self.context;
        let rows = rows.min(self.len().saturating_sub(first));
        let mut inputs = vec![0; rows * t];
        let mut targets = vec![IGNORE_INDEX; rows * t];
        for r in 0..rows {
            let start = (first + r) * t;
            let avail = (self.source.len() - start).min(t + 1); // >= 2
            let w = self.source.window(start, avail);
            inputs[r * t..r * t + avail - 1].copy_from_slice(&w[..avail - 1]);
            targets[r * t..r * t + avail - 1].copy_from_slice(&w[1..]);
        }
        Batch {
            rows,
            context: t,
            inputs,
            targets,
        }
    }

    /// All windows in batches of `rows` (the last batch may have fewer rows).
    pub fn batches(&self, rows: usize) -> impl Iterator<Item = Batch> + '_ {
        let rows = rows.max(1);
        (0..self.len())
            .step_by(rows)
            .map(move |first| self.batch(first, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u32) -> TokenSource {
        TokenSource::from_vec("train", (0..n).collect())
    }

    #[test]
    fn train_windows_are_shifted_by_one_and_in_range() {
        let mut b = TrainBatcher::new(seq(50), 4, 8, HostRng::new(3)).unwrap();
        for _ in 0..100 {
            let batch = b.next_batch();
            for (i, t) in batch.inputs.iter().zip(&batch.targets) {
                assert_eq!(i + 1, *t);
                assert!(*t < 50);
            }
        }
    }

    #[test]
    fn train_windows_reach_both_ends() {
        // 11 tokens, T = 9: windows of 10 start at 0 or 1; both appear.
        let mut b = TrainBatcher::new(seq(11), 1, 9, HostRng::new(1)).unwrap();
        let firsts: std::collections::HashSet<u32> =
            (0..64).map(|_| b.next_batch().inputs[0]).collect();
        assert_eq!(firsts, [0, 1].into_iter().collect());
    }

    #[test]
    fn eval_last_window_is_padded() {
        let w = EvalWindows::new(seq(10), 4).unwrap();
        assert_eq!(w.len(), 3); // targets 1..=9: 4 + 4 + 1
        let b = w.batch(2, 5);
        assert_eq!(b.rows, 1);
        assert_eq!(b.inputs, vec![8, 0, 0, 0]);
        assert_eq!(b.targets, vec![9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]);
    }
}
