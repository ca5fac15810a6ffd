//! Evaluation: the mean loss (and so the perplexity) of a model over the
//! windows of a split, during training and for `dyntie eval`.

use super::Trainer;
use crate::data::{EvalWindows, Split, TokenSource, IGNORE_INDEX};
use crate::model::Model;
use anyhow::{ensure, Result};

/// Mean loss over the windows of `source` (all of them when `max_windows`
/// is 0), in batches of `rows`; short batches are padded with ignored rows so
/// the model keeps one activation plan.
pub fn evaluate_split(
    model: &mut Model,
    source: TokenSource,
    rows: usize,
    max_windows: usize,
) -> Result<f64> {
    let n_ctx = model.config().n_ctx;
    let windows = EvalWindows::new(source, n_ctx)?;
    let n = if max_windows == 0 {
        windows.len()
    } else {
        windows.len().min(max_windows)
    };
    let (mut sum, mut count) = (0.0f64, 0usize);
    for first in (0..n).step_by(rows) {
        let mut b = windows.batch(first, rows.min(n - first));
        b.inputs.resize(rows * n_ctx, 0);
        b.targets.resize(rows * n_ctx, IGNORE_INDEX);
        let (s, c) = model.eval_loss(&b.inputs, &b.targets, rows, n_ctx)?;
        sum += s;
        count += c;
    }
    ensure!(count > 0, "the split has no targets to evaluate");
    Ok(sum / count as f64)
}

impl Trainer {
    /// Mean loss over (up to `max_windows` windows of) a split.
    pub fn evaluate(&mut self, split: Split, max_windows: usize) -> Result<f64> {
        let source = self.data.held_out(split);
        evaluate_split(&mut self.model, source, self.cfg.train.batch, max_windows)
    }
}
