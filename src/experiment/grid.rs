//! The grid file of `dyntie experiment`: configurations x variants x seeds,
//! expanded into one planned `dyntie train` command per run.
//!
//! ```toml
//! out = "runs"                 # run folders: <out>/<config>/<variant>/seed<N>
//! seeds = [1, 2, 3]
//! order = "seed"               # "seed" (every variant of seed 1 first) or "variant"
//! # report = "runs/summary"    # summary.md, results.jsonl, figures (default <out>/summary)
//! # tie_figure = "wt2/dynamic/seed1"  # the dynamic run whose tie pattern is drawn
//! # show_test = false          # test perplexity in the tables (only for the final choice)
//!
//! [[config]]
//! name = "wt2"
//! flags = "--config wt2.toml --data data/wt2 --checkpoint-every 250"
//!
//! [[variant]]
//! name = "none"
//! flags = "--tying none"
//!
//! [[variant]]
//! name = "dynamic"
//! flags = "--tying dynamic"
//! seeds = [1]                  # optional: other seeds than the grid's
//! configs = ["wt2"]            # optional: only these configurations
//! ```
//!
//! `out` and `report` are relative to the grid file's folder; paths inside
//! `flags` are taken as on the command line (relative to the working
//! directory). The runner adds `--seed N --out DIR` itself.

use crate::cli::{Cli, Command};
use crate::config::{BackendKind, RunConfig};
use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Which runs come first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Seed by seed: a first seed of every variant before any second seed.
    #[default]
    Seed,
    /// Variant by variant: all seeds of the first variant first.
    Variant,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    out: PathBuf,
    seeds: Vec<u64>,
    #[serde(default)]
    order: Order,
    report: Option<PathBuf>,
    tie_figure: Option<String>,
    #[serde(default)]
    show_test: bool,
    #[serde(rename = "config")]
    configs: Vec<ConfigEntry>,
    #[serde(rename = "variant")]
    variants: Vec<VariantEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigEntry {
    name: String,
    #[serde(default)]
    flags: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantEntry {
    name: String,
    #[serde(default)]
    flags: String,
    seeds: Option<Vec<u64>>,
    configs: Option<Vec<String>>,
}

/// One training run of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedRun {
    pub config: String,
    pub variant: String,
    pub seed: u64,
    pub dir: PathBuf,
    /// The arguments of `dyntie train` (without the program name).
    pub args: Vec<String>,
}

impl PlannedRun {
    /// `config/variant/seedN`, the run's name in tables and messages.
    pub fn id(&self) -> String {
        format!("{}/{}/seed{}", self.config, self.variant, self.seed)
    }

    /// The command line that trains this run from scratch.
    pub fn command(&self) -> String {
        format!("dyntie train {}", self.args.join(" "))
    }

    /// The resolved configuration of the run (checks the flags).
    pub fn resolve(&self) -> Result<RunConfig> {
        let argv = ["dyntie", "train"]
            .into_iter()
            .map(String::from)
            .chain(self.args.iter().cloned());
        let cli = Cli::try_parse_from(argv)
            .map_err(|e| anyhow::anyhow!("{}", e.render().to_string().trim()))?;
        let Command::Train(args) = cli.command else {
            unreachable!("the argument list starts with train")
        };
        args.resolve()
    }
}

/// A parsed grid: where the runs go and the runs in order.
#[derive(Clone, Debug)]
pub struct Grid {
    pub path: PathBuf,
    pub out: PathBuf,
    pub report: PathBuf,
    pub tie_figure: Option<String>,
    pub show_test: bool,
    pub runs: Vec<PlannedRun>,
}

/// Flags that belong to the runner: each run gets its own.
const RUNNER_FLAGS: [&str; 4] = ["--seed", "--out", "--resume", "--force"];

impl Grid {
    pub fn load(path: &Path) -> Result<Grid> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read grid file {}", path.display()))?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let base = std::fs::canonicalize(parent.unwrap_or(Path::new(".")))
            .with_context(|| format!("cannot find the folder of {}", path.display()))?;
        Self::parse(&text, &base)
            .with_context(|| format!("grid file {}", path.display()))
            .map(|g| Grid {
                path: path.to_path_buf(),
                ..g
            })
    }

    /// Parses grid TOML; `base` is the folder relative paths start from.
    pub fn parse(text: &str, base: &Path) -> Result<Grid> {
        let file: GridFile = toml::from_str(text).context("not a valid grid")?;
        ensure!(!file.configs.is_empty(), "the grid has no [[config]]");
        ensure!(!file.variants.is_empty(), "the grid has no [[variant]]");
        check_seeds(&file.seeds, "seeds")?;
        let mut names: Vec<&str> = vec![];
        for name in file
            .configs
            .iter()
            .map(|c| c.name.as_str())
            .chain(std::iter::once("|"))
            .chain(file.variants.iter().map(|v| v.name.as_str()))
        {
            if name == "|" {
                names.clear();
                continue;
            }
            check_name(name)?;
            ensure!(!names.contains(&name), "'{name}' is named twice");
            names.push(name);
        }
        for v in &file.variants {
            if let Some(s) = &v.seeds {
                check_seeds(s, &format!("variant {}: seeds", v.name))?;
            }
            for c in v.configs.iter().flatten() {
                ensure!(
                    file.configs.iter().any(|k| &k.name == c),
                    "variant {}: there is no config named '{c}'",
                    v.name
                );
            }
        }
        for flags in file
            .configs
            .iter()
            .map(|c| &c.flags)
            .chain(file.variants.iter().map(|v| &v.flags))
        {
            for f in flags.split_whitespace() {
                let name = f.split('=').next().unwrap_or(f);
                ensure!(
                    !RUNNER_FLAGS.contains(&name),
                    "flags '{flags}': {name} is set by the runner for each run; remove it"
                );
            }
        }
        let out = normalize(&base.join(&file.out));
        let report = file
            .report
            .map(|r| normalize(&base.join(r)))
            .unwrap_or_else(|| out.join("summary"));
        let mut runs = vec![];
        let seeds_of = |v: &VariantEntry| v.seeds.clone().unwrap_or_else(|| file.seeds.clone());
        let all_seeds: Vec<u64> = {
            let mut s: Vec<u64> = file.variants.iter().flat_map(seeds_of).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        let mut plan = |c: &ConfigEntry, v: &VariantEntry, seed: u64| {
            let wanted = v.configs.as_ref().is_none_or(|cs| cs.contains(&c.name));
            if !wanted || !seeds_of(v).contains(&seed) {
                return;
            }
            let dir = out.join(&c.name).join(&v.name).join(format!("seed{seed}"));
            let mut args: Vec<String> = c
                .flags
                .split_whitespace()
                .chain(v.flags.split_whitespace())
                .map(String::from)
                .collect();
            args.extend(["--seed".into(), seed.to_string(), "--out".into()]);
            args.push(dir.display().to_string());
            runs.push(PlannedRun {
                config: c.name.clone(),
                variant: v.name.clone(),
                seed,
                dir,
                args,
            });
        };
        match file.order {
            Order::Seed => {
                for &seed in &all_seeds {
                    for c in &file.configs {
                        for v in &file.variants {
                            plan(c, v, seed);
                        }
                    }
                }
            }
            Order::Variant => {
                for c in &file.configs {
                    for v in &file.variants {
                        for &seed in &all_seeds {
                            plan(c, v, seed);
                        }
                    }
                }
            }
        }
        for run in &runs {
            run.resolve()
                .with_context(|| format!("{}: the flags do not make a valid run", run.id()))?;
        }
        if let Some(id) = &file.tie_figure {
            ensure!(
                runs.iter().any(|r| &r.id() == id),
                "tie_figure '{id}' is not a run of the grid (use config/variant/seedN)"
            );
        }
        Ok(Grid {
            path: PathBuf::new(),
            out,
            report,
            tie_figure: file.tie_figure,
            show_test: file.show_test,
            runs,
        })
    }
}

/// `path` without `.` and with each `..` taken back (lexically).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.starts_with('.');
    if !ok {
        bail!("'{name}' is not a usable name: use letters, digits, '.', '_' and '-' (it becomes a folder name)");
    }
    Ok(())
}

fn check_seeds(seeds: &[u64], what: &str) -> Result<()> {
    ensure!(!seeds.is_empty(), "{what}: give at least one seed");
    let mut s = seeds.to_vec();
    s.sort_unstable();
    s.dedup();
    ensure!(s.len() == seeds.len(), "{what}: a seed is listed twice");
    Ok(())
}

/// The settings of a run that decide its result: `backend`, `recompute` and
/// `checkpoint_every` do not change what a CPU run computes, and a static
/// policy ignores the agent's settings.
pub fn result_defining(cfg: &RunConfig) -> toml::Table {
    let mut c = cfg.clone();
    c.backend = BackendKind::Auto;
    c.train.recompute = false;
    c.train.checkpoint_every = 0;
    let mut table = toml::Table::try_from(&c).expect("a RunConfig always serializes");
    if !c.tying.policy.is_dynamic() {
        if let Some(toml::Value::Table(t)) = table.get_mut("tying") {
            for k in ["init_ties", "agent_k", "param_cost", "agent_input"] {
                t.remove(k);
            }
        }
        table.remove("agent");
    }
    table
}

/// The dotted names of the fields where two configurations differ in what
/// decides a run's result (see [`result_defining`]), with both values.
pub fn config_differences(recorded: &RunConfig, planned: &RunConfig) -> Vec<String> {
    let mut planned = planned.clone();
    if planned.model.vocab_size == 0 {
        // A run folder records the vocabulary resolved from the dataset.
        planned.model.vocab_size = recorded.model.vocab_size;
    }
    if planned.precision.is_none() {
        // Likewise the precision its backend defaults to, and what it found
        // in the dataset folder (content hash and tokenizer).
        planned.precision = recorded.precision;
    }
    if planned.data.dataset_id.is_none() {
        planned.data.dataset_id = recorded.data.dataset_id.clone();
    }
    if planned.data.tokenizer.is_none() {
        planned.data.tokenizer = recorded.data.tokenizer;
    }
    let mut out = vec![];
    diff_tables(
        "",
        &result_defining(recorded),
        &result_defining(&planned),
        &mut out,
    );
    out
}

fn diff_tables(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let name = format!("{prefix}{k}");
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                diff_tables(&format!("{name}."), x, y, out)
            }
            (x, y) if x != y => {
                let show = |v: Option<&toml::Value>| v.map_or("(absent)".into(), |v| v.to_string());
                out.push(format!("{name}: folder {} / grid {}", show(x), show(y)));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tokenizer::TokenizerKind;
    use crate::precision::Precision;

    const GRID: &str = r#"
out = "runs"
seeds = [1, 2]
[[config]]
name = "tiny"
flags = "--preset tiny --backend cpu --steps 8"
[[variant]]
name = "none"
flags = "--tying none"
[[variant]]
name = "dyn"
flags = "--tying dynamic --agent-k 2"
seeds = [3]
"#;

    #[test]
    fn expands_configs_variants_and_seeds_in_order() {
        let g = Grid::parse(GRID, Path::new("/base")).unwrap();
        let ids: Vec<String> = g.runs.iter().map(|r| r.id()).collect();
        assert_eq!(
            ids,
            ["tiny/none/seed1", "tiny/none/seed2", "tiny/dyn/seed3"]
        );
        assert_eq!(g.out, Path::new("/base/runs"));
        let up = Grid::parse(
            &GRID.replace("\"runs\"", "\"../x/./runs\""),
            Path::new("/base/grids"),
        )
        .unwrap();
        assert_eq!(up.out, Path::new("/base/x/runs"));
        assert_eq!(normalize(Path::new("../a/../b")), Path::new("../b"));
        assert_eq!(g.report, Path::new("/base/runs/summary"));
        let r = &g.runs[2];
        assert_eq!(r.dir, Path::new("/base/runs/tiny/dyn/seed3"));
        assert_eq!(
            r.command(),
            "dyntie train --preset tiny --backend cpu --steps 8 --tying dynamic --agent-k 2 --seed 3 --out /base/runs/tiny/dyn/seed3"
        );
        let cfg = r.resolve().unwrap();
        assert_eq!((cfg.train.seed, cfg.tying.agent_k), (3, 2));

        let by_variant = GRID.replace("seeds = [1, 2]", "seeds = [1, 2]\norder = \"variant\"");
        let g = Grid::parse(&by_variant, Path::new(".")).unwrap();
        assert_eq!(g.runs.len(), 3);
        let two = GRID.replace("name = \"dyn\"", "name = \"dyn\"\nseeds = [2, 1]");
        let two = two.replace("seeds = [3]\n", "");
        let g = Grid::parse(&two, Path::new(".")).unwrap();
        let ids: Vec<String> = g.runs.iter().map(|r| r.id()).collect();
        assert_eq!(
            ids,
            [
                "tiny/none/seed1",
                "tiny/dyn/seed1",
                "tiny/none/seed2",
                "tiny/dyn/seed2"
            ]
        );
    }

    #[test]
    fn bad_grids_get_clear_errors() {
        let err = |text: String| match Grid::parse(&text, Path::new(".")) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err(GRID.replace("--agent-k 2", "--seed 4")).contains("--seed is set by the runner")
        );
        assert!(err(GRID.replace("--agent-k 2", "--agent-k 0")).contains("tiny/dyn/seed3"));
        assert!(err(GRID.replace("\"dyn\"", "\"none\"")).contains("named twice"));
        assert!(err(GRID.replace("\"dyn\"", "\"a/b\"")).contains("not a usable name"));
        assert!(err(GRID.replace("[1, 2]", "[]")).contains("at least one seed"));
        assert!(err(GRID.replace("[3]", "[3, 3]")).contains("listed twice"));
        assert!(err(GRID.replace("seeds = [3]", "configs = [\"big\"]"))
            .contains("no config named 'big'"));
        assert!(err(format!("{GRID}tie_figure = 1")).contains("not a valid grid"));
        assert!(err(GRID.replace(
            "out = \"runs\"",
            "out = \"runs\"\ntie_figure = \"tiny/x/seed1\""
        ))
        .contains("not a run of the grid"));
        assert!(err(GRID.replace("--tying none", "--tying nine")).contains("unknown policy"));
    }

    #[test]
    fn differences_ignore_what_does_not_change_a_result() {
        let g = Grid::parse(GRID, Path::new(".")).unwrap();
        let planned = g.runs[0].resolve().unwrap();
        let mut recorded = planned.clone();
        recorded.model.vocab_size = 512;
        recorded.train.checkpoint_every = 250;
        recorded.backend = BackendKind::Cuda;
        // A static policy does not use the agent's settings.
        recorded.tying.agent_k = 9;
        // What the trainer records of the dataset and the backend's default
        // precision, where the grid does not say.
        recorded.data.dataset_id = Some("3510f71f28c2db15".into());
        recorded.data.tokenizer = Some(TokenizerKind::Byte);
        recorded.precision = Some(Precision::Fp32);
        assert!(config_differences(&recorded, &planned).is_empty());
        let mut bf16 = planned.clone();
        bf16.precision = Some(Precision::Bf16);
        assert_eq!(
            config_differences(&recorded, &bf16),
            ["precision: folder \"fp32\" / grid \"bf16\""]
        );
        recorded.train.lr = 0.5;
        let d = config_differences(&recorded, &planned);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("train.lr: folder 0.5"), "{d:?}");

        let dynamic = g.runs[2].resolve().unwrap();
        let mut recorded = dynamic.clone();
        recorded.tying.agent_k = 9;
        let d = config_differences(&recorded, &dynamic);
        assert_eq!(d, ["tying.agent_k: folder 9 / grid 2"]);
    }
}
