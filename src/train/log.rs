//! What a run reports as it goes: lines in `metrics.jsonl`, the progress
//! bar and the lines printed above it, and `report.svg` drawn from the
//! logs at the end (the drawing itself is [`crate::report`]).

use super::run_dir;
use super::Trainer;
use crate::data::Split;
use crate::metrics;
use crate::optim::StepStats;
use crate::report::{self, EvalPoint, LossPoint, ReportData, TieSnapshot};
use crate::tying::agent::TieRecord;
use crate::tying::table::TieTable;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

impl Trainer {
    /// A `train` line: loss, learning rate, skipped updates, speed, tying,
    /// memory, and with replicas the bytes each step all-reduced (averaged
    /// over the steps since the last line).
    pub(super) fn log_train(
        &mut self,
        stats: &StepStats,
        tokens_per_s: f64,
        all_reduce_bytes_per_step: u64,
    ) -> Result<()> {
        let (counted, _) = self.memory();
        let mem = self.model.backend().mem_stats();
        let line = serde_json::json!({
            "kind": "train",
            "step": self.step,
            "loss": stats.loss,
            "lr": self.opt.lr,
            "grad_norm": stats.norm,
            "skipped_updates": stats.skipped,
            "tokens_per_s": tokens_per_s,
            "tokens": self.tokens_seen,
            "elapsed_s": self.elapsed_s,
            "unique_blocks": counted.live_slots,
            "trainable_blocks": counted.trainable_slots,
            "trainable_params": counted.trainable_params,
            "counted_bytes": counted.total_bytes,
            "live_bytes": mem.live_bytes,
            "peak_bytes": mem.peak_bytes,
            "replicas": self.comm.world_size(),
            "all_reduce_bytes_per_step": all_reduce_bytes_per_step,
            // Of this process (a resumed run counts from its resume).
            "graph": self.model.backend().graph_counts(),
        });
        self.files_mut()?.metrics.write(&line)
    }

    /// An `eval` line: the split's loss and perplexity.
    pub(super) fn log_eval(&mut self, split: Split, loss: f64) -> Result<()> {
        let line = serde_json::json!({
            "kind": "eval",
            "step": self.step,
            "split": split,
            "loss": loss,
            "ppl": loss.exp(),
        });
        self.files_mut()?.metrics.write(&line)
    }

    /// Draws `report.svg` from the run's metrics and tie decisions.
    pub fn write_report(&self) -> Result<()> {
        write_report(&self.dir, self.model.slots().table())
    }
}

/// A bar of `total` steps standing at `at`; hidden when not `visible`.
pub(super) fn progress_bar(total: u64, at: u64, visible: bool) -> ProgressBar {
    let bar = if visible {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps | {msg} | ETA {eta}")
            .expect("a valid template"),
    );
    bar.set_position(at);
    bar
}

/// Prints a line above the bar (to stderr when the bar is hidden).
pub(super) fn say(bar: &ProgressBar, msg: String) {
    if bar.is_hidden() {
        eprintln!("{msg}");
    } else {
        bar.println(msg);
    }
}

/// `report.svg` from `metrics.jsonl` and `ties.jsonl` in `dir`; `table` is
/// the final table (the only snapshot for a static policy).
pub fn write_report(dir: &Path, table: &TieTable) -> Result<()> {
    let records = metrics::read_jsonl(&dir.join(run_dir::METRICS))?;
    let num = |r: &serde_json::Value, k: &str| r.get(k).and_then(|v| v.as_f64());
    let step = |r: &serde_json::Value| r.get("step").and_then(|v| v.as_u64()).unwrap_or(0);
    let losses: Vec<LossPoint> = records
        .iter()
        .filter(|r| r["kind"] == "train")
        .filter_map(|r| {
            Some(LossPoint {
                step: step(r),
                train_loss: num(r, "loss")?,
            })
        })
        .collect();
    let evals: Vec<EvalPoint> = records
        .iter()
        .filter(|r| r["kind"] == "eval" && r["split"] == "valid")
        .filter_map(|r| {
            Some(EvalPoint {
                step: step(r),
                valid_ppl: num(r, "ppl")?,
            })
        })
        .collect();
    let mut ties: Vec<TieSnapshot> = metrics::read_jsonl(&dir.join(run_dir::TIES))?
        .into_iter()
        .filter_map(|r| {
            let rec: TieRecord = serde_json::from_value(r).ok()?;
            Some(TieSnapshot {
                step: rec.step,
                state: rec.state_after,
                slots: rec.slots_after,
            })
        })
        .collect();
    let last_step = losses.last().map_or(0, |l| l.step);
    if ties.is_empty() {
        for s in [0, last_step] {
            ties.push(TieSnapshot {
                step: s,
                state: table.state().to_vec(),
                slots: table.slots().to_vec(),
            });
        }
    }
    let title = format!("dyntie run {}", dir.display());
    let svg = report::render_svg(&ReportData {
        title: &title,
        losses: &losses,
        evals: &evals,
        ties: &ties,
    });
    let path = dir.join(run_dir::REPORT);
    std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))
}
