//! `dyntie train`: a new run, or the resume of one, then its summary; in
//! one process (with `--replicas N` threads) or as one process of several
//! launched together (`RANK`, `WORLD_SIZE`, ... from torchrun or a
//! scheduler).

use super::{check_memory, replicas_of, select_backend_on, SelectedBackend};
use crate::cli::TrainArgs;
use crate::config::RunConfig;
use crate::dist::{checksum, Comm, Launch, Nccl, Tcp};
use crate::metrics::utc_timestamp;
use crate::train::{check_split, run_dir, Replicas, Summary, Trainer};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::path::PathBuf;

/// `dyntie train`.
pub fn train(args: &TrainArgs) -> Result<()> {
    if let Some(launch) = Launch::from_env()? {
        return train_launched(args, &launch);
    }
    let (mut trainer, selected, replicas) = build(args, 0, args.replicas)?;
    trainer.set_step_graph(!args.model.no_graph);
    describe(&trainer);
    let s = match replicas {
        Some(replicas) => {
            describe_replicas(&trainer, &selected, replicas.world_size());
            trainer.run_replicated(replicas)?
        }
        None => trainer.run()?,
    };
    print_summary(&trainer, &s);
    Ok(())
}

/// Builds rank 0's trainer: a new run, or the resume of `--resume`, on GPU
/// `gpu` where the backend is CUDA, for a batch split over `split`
/// replicas (the other `--replicas` of this process made before the run
/// folder is touched, so that a missing GPU or NCCL leaves it as it was).
fn build(
    args: &TrainArgs,
    gpu: usize,
    split: usize,
) -> Result<(Trainer, SelectedBackend, Option<Replicas>)> {
    let replicas_here = args.replicas;
    Ok(if let Some(dir) = &args.resume {
        let fixed = args.fixed_on_resume();
        ensure!(
            fixed.is_empty(),
            "--resume continues {} as its config.toml says; {} would change the run: drop {} (only --steps, --lr, --backend, --precision, --recompute and --data for a dataset that moved may change on resume), or start a new run with --out",
            dir.display(),
            fixed.join(", "),
            if fixed.len() == 1 { "it" } else { "them" }
        );
        let mut cfg = run_dir::load_config(dir, "--resume")?;
        let selected = select_backend_on(args.model.backend.unwrap_or(cfg.backend), gpu)?;
        if args.model.recompute {
            cfg.train.recompute = true;
        }
        if let Some(lr) = args.lr {
            // Checked before the run folder is touched.
            cfg.train.lr = lr;
            cfg.train.min_lr = 0.0;
            cfg.validate()?;
        }
        check_split(cfg.train.batch, split)?;
        check_memory(&cfg, &selected)?;
        let replicas = replicas_for(replicas_here, &selected)?;
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
        check_split(cfg.train.batch, split)?;
        let selected = select_backend_on(cfg.backend, gpu)?;
        check_memory(&cfg, &selected)?;
        let replicas = replicas_for(replicas_here, &selected)?;
        println!("{}", selected.why);
        let t = Trainer::create(cfg, selected.backend.clone(), &dir, args.force)?;
        (t, selected, replicas)
    })
}

/// What a finished run prints.
fn print_summary(trainer: &Trainer, s: &Summary) {
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
}

/// `dyntie train` as rank `launch.rank` of `launch.world_size` processes
/// launched together (torchrun, a cluster scheduler, or by hand). Every
/// process runs the same command. They join over TCP (rank 0 listens on
/// `MASTER_PORT`); rank 0 builds the run (new or resumed) as a single
/// process would and sends every other rank its configuration and state,
/// so all start equal. On GPUs the gradients are then summed with NCCL (its
/// group id travels over the same connection), on the CPU and the emulator
/// over TCP. Rank 0 decides ties and writes the run folder; the others
/// only train.
fn train_launched(args: &TrainArgs, launch: &Launch) -> Result<()> {
    let (rank, world) = (launch.rank, launch.world_size);
    ensure!(
        args.replicas == 1,
        "--replicas {} in a run launched as {world} processes (WORLD_SIZE={world}): each \
         process trains one replica; launch more processes instead of --replicas",
        args.replicas
    );
    // Every process must run the same command; the program's own path may
    // differ from machine to machine.
    let command: Vec<u8> = std::env::args_os()
        .skip(1)
        .flat_map(|a| {
            let mut bytes = a.into_encoded_bytes();
            bytes.push(0);
            bytes
        })
        .collect();
    if rank == 0 {
        println!(
            "rank 0 of {world}: waiting on port {} for the other ranks",
            launch.master_port
        );
    } else {
        println!(
            "rank {rank} of {world}: joining rank 0 at {}:{}",
            launch.master_addr, launch.master_port
        );
    }
    let group = Tcp::join(launch, checksum(&command), Launch::join_timeout()?)?;
    if rank == 0 {
        let built = build(args, launch.local_rank, world);
        let message = match &built {
            Ok((t, _, _)) => t.leader_message(),
            Err(e) => Err(anyhow!("{e:#}")),
        };
        share(
            &group,
            Some(
                message
                    .as_ref()
                    .map(Vec::clone)
                    .map_err(|e| anyhow!("{e:#}")),
            ),
        )?;
        let (mut trainer, selected, _) = built?;
        message?;
        let comm = gradient_comm(group, &selected, launch)?;
        trainer.join_group(comm);
        trainer.set_step_graph(!args.model.no_graph);
        describe(&trainer);
        println!(
            "{world} data-parallel processes, each on {} of the {} rows of every batch; rank 0 \
             (this one) decides ties and writes the run folder",
            trainer.config().train.batch / world,
            trainer.config().train.batch
        );
        let s = trainer.run()?;
        print_summary(&trainer, &s);
        return Ok(());
    }
    let message = share(&group, None).map_err(|e| e.context(format!("rank {rank}")))?;
    let cfg = leader_config(&message)?;
    let selected = select_backend_on(cfg.backend, launch.local_rank)?;
    println!("rank {rank}: {}", selected.why);
    check_memory(&cfg, &selected)?;
    let mut trainer = Trainer::from_leader_message(&message, selected.backend.clone())
        .with_context(|| format!("rank {rank} cannot build its replica of rank 0's run"))?;
    let comm = gradient_comm(group, &selected, launch)?;
    trainer.join_group(comm);
    println!(
        "rank {rank}: training from step {} with rank 0 (which writes {})",
        trainer.step(),
        trainer.dir().display()
    );
    trainer.train_as_follower()?;
    println!("rank {rank}: done at step {}", trainer.step());
    Ok(())
}

/// Rank 0 sends `from_leader` (its bytes, or why it could not make them)
/// to every rank; every rank returns the bytes, or rank 0's error.
fn share(group: &Tcp, from_leader: Option<Result<Vec<u8>>>) -> Result<Vec<u8>> {
    let mut message = match &from_leader {
        Some(Ok(bytes)) => [&[0u8][..], bytes].concat(),
        Some(Err(e)) => [&[1u8][..], format!("{e:#}").as_bytes()].concat(),
        None => Vec::new(),
    };
    group.broadcast_bytes(0, &mut message)?;
    match message.split_first() {
        Some((0, bytes)) => Ok(bytes.to_vec()),
        Some((_, why)) => bail!(
            "rank 0 could not start the run: {}",
            String::from_utf8_lossy(why)
        ),
        None => bail!("rank 0 sent nothing"),
    }
}

/// The configuration inside rank 0's message (to choose the backend before
/// the replica is built).
fn leader_config(message: &[u8]) -> Result<RunConfig> {
    let word = |at: usize| -> Result<usize> {
        let bytes = message
            .get(at..at + 8)
            .context("rank 0's message is cut short")?;
        Ok(u64::from_le_bytes(bytes.try_into().unwrap()) as usize)
    };
    let dir_len = word(0)?;
    let cfg_len = word(8 + dir_len)?;
    let at = 16 + dir_len;
    let text = message
        .get(at..at + cfg_len)
        .context("rank 0's message is cut short")?;
    RunConfig::from_toml_str(std::str::from_utf8(text)?).context("rank 0's configuration")
}

/// How the launched processes sum their gradients: NCCL on GPUs (rank 0
/// makes the group id and sends it over `group`), else `group` itself.
fn gradient_comm(group: Tcp, selected: &SelectedBackend, launch: &Launch) -> Result<Box<dyn Comm>> {
    let Some(gpu) = &selected.cuda else {
        return Ok(Box::new(group));
    };
    let id = share(
        &group,
        (launch.rank == 0).then(|| Nccl::unique_id().map(|id| id.to_vec())),
    )
    .context("a launched run on GPUs sums the gradients with NCCL, which is not usable")?;
    let id: [u8; 128] = id
        .try_into()
        .map_err(|_| anyhow!("rank 0 sent an NCCL id of the wrong length"))?;
    let nccl = Nccl::new(gpu.shared_device(), &id, launch.rank, launch.world_size)?;
    Ok(Box::new(nccl))
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
