//! The grid's summary: a Markdown table per run and per variant (mean ± std
//! over seeds), every result in one JSON-lines file, and the figures.

use super::grid::Grid;
use super::results::RunResult;
use crate::metrics::read_jsonl;
use crate::report::{self, ScatterSeries, TieSnapshot};
use crate::tying::agent::TieRecord;
use anyhow::{Context, Result};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Mean and sample standard deviation (n - 1; 0 for a single value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, var.sqrt())
}

/// One variant on one configuration, over its finished seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub config: String,
    pub variant: String,
    pub seeds: Vec<u64>,
    pub valid_ppl: (f64, f64),
    pub test_ppl: (f64, f64),
    pub unique_end: (f64, f64),
    pub trainable_end: (f64, f64),
    pub trainable_mean: (f64, f64),
    pub trainable_block_params_end: (f64, f64),
    pub train_s: (f64, f64),
    pub wall_s: Option<(f64, f64)>,
    pub cpu_s: Option<(f64, f64)>,
}

/// Groups `results` by (config, variant) in the order they first appear.
pub fn groups(results: &[RunResult]) -> Vec<Group> {
    let mut keys: Vec<(&str, &str)> = vec![];
    for r in results {
        let k = (r.config.as_str(), r.variant.as_str());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(config, variant)| {
            let rs: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.config == config && r.variant == variant)
                .collect();
            let stat = |f: &dyn Fn(&RunResult) -> f64| {
                mean_std(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let all = |f: &dyn Fn(&RunResult) -> Option<f64>| {
                let v: Option<Vec<f64>> = rs.iter().map(|r| f(r)).collect();
                v.map(|v| mean_std(&v))
            };
            Group {
                config: config.into(),
                variant: variant.into(),
                seeds: rs.iter().map(|r| r.seed).collect(),
                valid_ppl: stat(&|r| r.valid_ppl),
                test_ppl: stat(&|r| r.test_ppl),
                unique_end: stat(&|r| r.unique_blocks_end as f64),
                trainable_end: stat(&|r| r.trainable_blocks_end as f64),
                trainable_mean: stat(&|r| r.trainable_blocks_mean),
                trainable_block_params_end: stat(&|r| r.trainable_block_params_end as f64),
                train_s: stat(&|r| r.train_s),
                wall_s: all(&|r| r.wall_s),
                cpu_s: all(&|r| r.cpu_s),
            }
        })
        .collect()
}

fn pm((m, s): (f64, f64), digits: usize, n: usize) -> String {
    if n < 2 {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ± {s:.digits$}")
    }
}

fn minutes(s: Option<f64>) -> String {
    s.map_or("—".into(), |s| format!("{:.1}", s / 60.0))
}

/// The Markdown summary: per variant, per run, and what is not finished.
pub fn markdown(grid: &Grid, results: &[RunResult], unfinished: &[(String, String)]) -> String {
    let mut md = String::new();
    let test = grid.show_test;
    let _ = writeln!(md, "# Experiment summary\n");
    let _ = writeln!(
        md,
        "Grid `{}`; {} of {} runs finished. Perplexities are over the whole split at the last step{}.\n",
        grid.path.display(),
        results.len(),
        results.len() + unfinished.len(),
        if test {
            ""
        } else {
            " (valid only: test perplexity is kept for the final choice)"
        }
    );
    let mut commits: Vec<&str> = results
        .iter()
        .flat_map(|r| r.commits.iter().map(|c| c.as_str()))
        .collect();
    commits.sort_unstable();
    commits.dedup();
    let mut machines: Vec<&str> = results.iter().map(|r| r.machine.as_str()).collect();
    machines.sort_unstable();
    machines.dedup();
    let _ = writeln!(
        md,
        "Commits: {}. Machines: {}.\n",
        if commits.is_empty() {
            "unrecorded".into()
        } else {
            commits.join(", ")
        },
        machines
            .iter()
            .map(|m| if m.is_empty() { "unrecorded" } else { m })
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(md, "## Mean ± std over seeds\n");
    let test_head = if test { " test ppl |" } else { "" };
    let test_rule = if test { "---:|" } else { "" };
    let _ = writeln!(
        md,
        "| config | variant | seeds | valid ppl |{test_head} unique blocks (end) | trainable blocks (end) | trainable blocks (mean over training) | trainable block params (end) | train time (min) | wall (min) | CPU (min) |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---:|{test_rule}---:|---:|---:|---:|---:|---:|---:|"
    );
    for g in groups(results) {
        let n = g.seeds.len();
        let seeds = g
            .seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let test_cell = if test {
            format!(" {} |", pm(g.test_ppl, 3, n))
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {seeds} | {} |{test_cell} {} | {} | {} | {} | {:.1} | {} | {} |",
            g.config,
            g.variant,
            pm(g.valid_ppl, 3, n),
            pm(g.unique_end, 1, n),
            pm(g.trainable_end, 1, n),
            pm(g.trainable_mean, 2, n),
            pm(
                (
                    g.trainable_block_params_end.0 / 1e6,
                    g.trainable_block_params_end.1 / 1e6
                ),
                3,
                n
            ) + " M",
            g.train_s.0 / 60.0,
            minutes(g.wall_s.map(|w| w.0)),
            minutes(g.cpu_s.map(|c| c.0)),
        );
    }
    let _ = writeln!(md, "\n## Per run\n");
    let _ = writeln!(
        md,
        "| run | valid ppl |{test_head} unique (end) | trainable (end) | unique (mean) | trainable (mean) | decisions | table changes | last change (step) | train (min) | wall (min) | CPU (min) | commit |"
    );
    let _ = writeln!(
        md,
        "|---|---:|{test_rule}---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in results {
        let (decisions, changes, last) = match &r.ties {
            Some(t) => (
                t.decisions.to_string(),
                t.changes.to_string(),
                t.last_change_step.map_or("—".into(), |s| s.to_string()),
            ),
            None => ("—".into(), "—".into(), "—".into()),
        };
        let test_cell = if test {
            format!(" {:.3} |", r.test_ppl)
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {} | {:.3} |{test_cell} {} | {} | {:.2} | {:.2} | {decisions} | {changes} | {last} | {:.1} | {} | {} | {} |",
            r.id,
            r.valid_ppl,
            r.unique_blocks_end,
            r.trainable_blocks_end,
            r.unique_blocks_mean,
            r.trainable_blocks_mean,
            r.train_s / 60.0,
            minutes(r.wall_s),
            minutes(r.cpu_s),
            if r.commits.is_empty() {
                "unrecorded".into()
            } else {
                r.commits.join(" + ")
            }
        );
    }
    if !unfinished.is_empty() {
        let _ = writeln!(md, "\n## Not finished\n");
        for (id, state) in unfinished {
            let _ = writeln!(md, "- {id}: {state}");
        }
    }
    let _ = writeln!(md, "\n## Commands\n");
    for r in results {
        let _ = writeln!(md, "- {}: `{}`", r.id, r.command);
    }
    md
}

/// The scatter of valid perplexity against trainable block parameters for
/// one configuration.
pub fn ppl_figure(config: &str, results: &[RunResult]) -> String {
    let series: Vec<ScatterSeries> = groups(results)
        .into_iter()
        .filter(|g| g.config == config)
        .map(|g| {
            let points = results
                .iter()
                .filter(|r| r.config == g.config && r.variant == g.variant)
                .map(|r| (r.trainable_block_params_end as f64 / 1e6, r.valid_ppl))
                .collect();
            let (px, sx) = g.trainable_block_params_end;
            ScatterSeries {
                label: g.variant.clone(),
                points,
                mean: (px / 1e6, g.valid_ppl.0),
                err: (sx / 1e6, g.valid_ppl.1),
            }
        })
        .collect();
    report::render_scatter(
        &format!("{config}: valid perplexity against trainable block parameters at the end"),
        "trainable block parameters at the end (millions)",
        "valid perplexity (mean ± std over seeds; small dots: single runs)",
        &series,
    )
}

/// The tie pattern over time of one run, from its `ties.jsonl`.
pub fn ties_figure(id: &str, dir: &Path) -> Result<String> {
    let ties: Vec<TieSnapshot> = read_jsonl(&dir.join("ties.jsonl"))?
        .into_iter()
        .map(|r| {
            let rec: TieRecord = serde_json::from_value(r)
                .with_context(|| format!("{}/ties.jsonl is corrupt", dir.display()))?;
            Ok(TieSnapshot {
                step: rec.step,
                state: rec.state_after,
                slots: rec.slots_after,
            })
        })
        .collect::<Result<_>>()?;
    Ok(report::render_ties_svg(
        &format!("{id}: tie pattern over training"),
        &ties,
    ))
}

/// Writes `summary.md`, `results.jsonl`, `ppl-vs-params-<config>.svg` and
/// `ties-<run>.svg` into the grid's report folder; returns the files.
pub fn write_report(
    grid: &Grid,
    results: &[RunResult],
    unfinished: &[(String, String)],
) -> Result<Vec<PathBuf>> {
    let dir = &grid.report;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = vec![];
    let mut put = |name: String, text: String| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    put("summary.md".into(), markdown(grid, results, unfinished))?;
    let mut lines = String::new();
    for r in results {
        lines += &serde_json::to_string(r)?;
        lines.push('\n');
    }
    put("results.jsonl".into(), lines)?;
    let mut configs: Vec<&str> = results.iter().map(|r| r.config.as_str()).collect();
    configs.dedup();
    for c in configs {
        put(format!("ppl-vs-params-{c}.svg"), ppl_figure(c, results))?;
    }
    // The tie pattern of the chosen run, else of the first finished dynamic one.
    let tie_run = match &grid.tie_figure {
        Some(id) => results.iter().find(|r| &r.id == id),
        None => results.iter().find(|r| r.ties.is_some()),
    };
    if let Some(r) = tie_run {
        let svg = ties_figure(&r.id, Path::new(&r.dir))?;
        put(format!("ties-{}.svg", r.id.replace('/', "-")), svg)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12);
        // Sample variance: (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5 / 3.
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[7.0]), (7.0, 0.0));
        assert!(mean_std(&[]).0.is_nan());
        assert_eq!(pm((5.0, 0.25), 2, 3), "5.00 ± 0.25");
        assert_eq!(pm((5.0, 0.0), 2, 1), "5.00");
    }
}
