//! `dyntie train`: a new run, or the resume of one, then its summary.

use super::{
    check_memory, refuse_launcher_environment, replicas_of, select_backend, SelectedBackend,
};
use crate::cli::TrainArgs;
use crate::metrics::utc_timestamp;
use crate::train::{check_split, run_dir, Replicas, Trainer};
use anyhow::{ensure, Result};
use std::path::PathBuf;

/// `dyntie train`.
pub fn train(args: &TrainArgs) -> Result<()> {
    refuse_launcher_environment()?;
    let (mut trainer, selected, replicas) = if let Some(dir) = &args.resume {
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
        check_split(cfg.train.batch, args.replicas)?;
        check_memory(&cfg, &selected)?;
        let replicas = replicas_for(args.replicas, &selected)?;
        println!("{}", selected.why);
        let moved = args.data.as_deref().map(std::path::Path::new);
        let mut t = Trainer::resume_from(dir, selected.backend.clone(), args.steps, moved)?;
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
        (t, selected, replicas)
    } else {
        let cfg = args.resolve()?;
        let dir = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(utc_timestamp()));
        // Before anything is built: the folder, then the memory.
        run_dir::check_new(&dir, args.force)?;
        check_split(cfg.train.batch, args.replicas)?;
        let selected = select_backend(cfg.backend)?;
        check_memory(&cfg, &selected)?;
        let replicas = replicas_for(args.replicas, &selected)?;
        println!("{}", selected.why);
        let t = Trainer::create(cfg, selected.backend.clone(), &dir, args.force)?;
        (t, selected, replicas)
    };
    trainer.set_step_graph(!args.model.no_graph);
    describe(&trainer);
    let s = match replicas {
        Some(replicas) => {
            describe_replicas(&trainer, &selected, replicas.world_size());
            trainer.run_replicated(replicas)?
        }
        None => trainer.run()?,
    };
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

/// The other replicas of `--replicas n` (none for one), made before the
/// run folder is touched, so that a missing GPU or NCCL leaves it as it was.
fn replicas_for(n: usize, selected: &SelectedBackend) -> Result<Option<Replicas>> {
    Ok(if n > 1 {
        Some(replicas_of(selected, n)?)
    } else {
        None
    })
}

fn describe_replicas(t: &Trainer, selected: &SelectedBackend, n: usize) {
    let batch = t.config().train.batch;
    let place = if selected.cuda.is_some() {
        format!("on GPUs 0..{}", n - 1)
    } else {
        format!(
            "as threads of this process ({} backend)",
            selected.backend.name()
        )
    };
    println!(
        "{n} data-parallel replicas {place}, each on {} of the {batch} rows of every batch; \
         rank 0 decides ties and writes the run folder",
        batch / n
    );
}

fn describe(t: &Trainer) {
    let m = t.model().config();
    let n_params = m.total_params();
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
