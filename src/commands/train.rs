//! `dyntie train`: a new run, or the resume of one, then its summary.

use super::{check_memory, select_backend};
use crate::cli::TrainArgs;
use crate::metrics::utc_timestamp;
use crate::train::{run_dir, Trainer};
use anyhow::{ensure, Result};
use std::path::PathBuf;

/// `dyntie train`.
pub fn train(args: &TrainArgs) -> Result<()> {
    let mut trainer = if let Some(dir) = &args.resume {
        let fixed = args.fixed_on_resume();
        ensure!(
            fixed.is_empty(),
            "--resume continues {} as its config.toml says; {} would change the run: drop {} (only --steps, --lr, --backend, --precision, --recompute and --data for a dataset that moved may change on resume), or start a new run with --out",
            dir.display(),
            fixed.join(", "),
            if fixed.len() == 1 { "it" } else { "them" }
        );
        let mut cfg = run_dir::load_config(dir, "--resume")?;
        let selected = select_backend(args.model.backend.unwrap_or(cfg.backend))?;
        if args.model.recompute {
            cfg.train.recompute = true;
        }
        if let Some(lr) = args.lr {
            // Checked before the run folder is touched.
            cfg.train.lr = lr;
            cfg.train.min_lr = 0.0;
            cfg.validate()?;
        }
        check_memory(&cfg, &selected)?;
        println!("{}", selected.why);
        let moved = args.data.as_deref().map(std::path::Path::new);
        let mut t = Trainer::resume_from(dir, selected.backend, args.steps, moved)?;
        println!("resuming {} at step {}", dir.display(), t.step());
        for note in t.notes() {
            println!("{note}");
        }
        if let Some(p) = args.model.precision {
            if t.config().precision != Some(p) {
                t.set_precision(p)?;
                println!("precision {p} from here on (config.toml updated)");
            }
        }
        if args.model.recompute && !t.config().train.recompute {
            t.enable_recompute()?;
            println!("activations are recomputed from here on (config.toml updated)");
        }
        if let Some(lr) = args.lr {
            println!("{}", t.change_lr(lr)?);
        }
        t
    } else {
        let cfg = args.resolve()?;
        let dir = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(utc_timestamp()));
        // Before anything is built: the folder, then the memory.
        run_dir::check_new(&dir, args.force)?;
        let selected = select_backend(cfg.backend)?;
        check_memory(&cfg, &selected)?;
        println!("{}", selected.why);
        Trainer::create(cfg, selected.backend, &dir, args.force)?
    };
    trainer.set_step_graph(!args.model.no_graph);
    describe(&trainer);
    let s = trainer.run()?;
    let pct = |a: u64, b: u64| 100.0 * (1.0 - a as f64 / b.max(1) as f64);
    println!(
        "done: {} steps in {:.1} s ({:.0} tokens/s)",
        s.steps, s.seconds, s.tokens_per_s
    );
    println!(
        "perplexity: valid {:.3}, test {:.3}",
        s.valid_ppl, s.test_ppl
    );
    println!(
        "unique blocks {}/{}; trainable parameters {:.3} M vs {:.3} M conventional ({:.0}% fewer)",
        s.unique_blocks,
        s.n_layer,
        s.counted.trainable_params as f64 / 1e6,
        s.conventional.trainable_params as f64 / 1e6,
        pct(s.counted.trainable_params, s.conventional.trainable_params)
    );
    println!(
        "counted training memory {:.1} MiB vs {:.1} MiB conventional ({:.0}% less)",
        s.counted.total_bytes as f64 / MIB,
        s.conventional.total_bytes as f64 / MIB,
        pct(s.counted.total_bytes, s.conventional.total_bytes)
    );
    println!(
        "run folder: {} (metrics.jsonl, ties.jsonl, report.svg, checkpoints/)",
        trainer.dir().display()
    );
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

fn describe(t: &Trainer) {
    let m = t.model().config();
    let n_params = t.model().global_layout().len() + m.n_layer * t.model().block_layout().len();
    let table = t.model().slots().table();
    println!(
        "model: {} blocks x width {}, {} heads, context {}, vocab {} ({:.2} M parameters untied), precision {}, attention {}{}",
        m.n_layer,
        m.n_embd,
        m.n_head,
        m.n_ctx,
        m.vocab_size,
        n_params as f64 / 1e6,
        t.model().precision(),
        t.model().attention(),
        if t.model().recompute() {
            "; activations recomputed in backward"
        } else {
            ""
        }
    );
    println!(
        "tying: table {:?} ({} unique blocks); run folder {}",
        table.state(),
        table.live_slots().len(),
        t.dir().display()
    );
}
