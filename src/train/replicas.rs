//! Data-parallel training in one process: `N` replicas, each a thread with
//! its own backend (a GPU, or a CPU/emulator backend in tests) and its own
//! copy of the model, all training the same model on different rows of
//! every batch.
//!
//! - The batch: `--batch B` is the global batch. Every replica draws the
//!   same `B` rows from the same data stream and trains on its own `B / N`
//!   of them (rank `r` takes rows `r*B/N..(r+1)*B/N`), so a step sees the
//!   same tokens whatever `N` is, and tokens per step stay `B x n_ctx x
//!   grad_accum`.
//! - The gradient: each replica scales its gradient by `1 / (N x
//!   grad_accum)`; the gradients of the globals and of the trainable slots
//!   and the step's loss are summed over the replicas before clipping, so
//!   every replica clips and runs AdamW on the same bits and stays equal
//!   to every other. Each replica's dropout masks come from its own seed.
//! - The ties: the agent lives on rank 0. At each decision step rank 0
//!   closes and makes its decision alone (the reward is rank 0's perplexity
//!   on the whole reward batch, the same number every replica's equal
//!   weights would give), broadcasts the action it applied, every other
//!   rank applies it, and a checksum of the tie table is compared across
//!   ranks; a table that differs stops every rank with an error.
//! - The run folder: only rank 0 logs, evaluates, checkpoints and writes
//!   the report; the others only train. A resume builds rank 0 from the
//!   checkpoint and copies its state to the others, so a run resumed with
//!   the same `N` continues bit for bit.
//! - Failures: a replica that fails leaves the group, which turns every
//!   other replica's next collective into an error; the first error (the
//!   cause) is what the run reports.
//!
//! Not done yet (a prediction of how): the all-reduce is one call per
//! buffer after the whole backward pass. Overlapping it with backward
//! would all-reduce each block's gradient slot on a second stream as soon
//! as the backward pass leaves that block (the last block first), after an
//! event recorded on the compute stream; a tied slot is reduced after the
//! earliest block that shares it, and the globals last.

use super::checkpoint::Snapshot;
use super::trainer::Summary;
use super::Trainer;
use crate::data::Batch;
use crate::dist::{all_reduce_gradients, checksum, same_on_every_rank, Comm, InProcess, Single};
use crate::mem::View;
use crate::model::GradReady;
use crate::ops::Backend;
use anyhow::{bail, ensure, Context, Result};
use std::sync::{Arc, Mutex};

/// Joins one replica to its group: runs on the replica's own thread (an
/// NCCL group forms only once every rank has called in).
pub type Join = Box<dyn FnOnce() -> Result<Box<dyn Comm>> + Send>;

/// The replicas of a run besides rank 0, and how each rank joins.
pub struct Replicas {
    /// The backends of ranks `1..N` (rank 0 is the trainer's own).
    pub backends: Vec<Arc<dyn Backend>>,
    /// How ranks `0..N` join the group.
    pub joins: Vec<Join>,
    /// A test hook: a fault made on one replica at one step.
    #[doc(hidden)]
    pub fault: Option<ReplicaFault>,
}

/// What [`ReplicaFault`] does.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub enum FaultKind {
    /// The replica fails with an error.
    Error,
    /// The replica changes block 1's tie on its own (ties it to block 0,
    /// or unties it), so its table differs from the others'.
    SkewTable,
}

/// A fault that a test makes on replica `rank` before training step `step`.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct ReplicaFault {
    pub rank: usize,
    pub step: u64,
    pub kind: FaultKind,
}

impl Replicas {
    /// Replicas as threads sharing host memory ([`InProcess`]), one per
    /// backend of `backends` (ranks `1..N`).
    pub fn in_process(backends: Vec<Arc<dyn Backend>>) -> Result<Replicas> {
        let joins = InProcess::group(backends.len() + 1)?
            .into_iter()
            .map(|c| Box::new(move || Ok(Box::new(c) as Box<dyn Comm>)) as Join)
            .collect();
        Ok(Replicas {
            backends,
            joins,
            fault: None,
        })
    }

    /// How many replicas train together.
    pub fn world_size(&self) -> usize {
        self.backends.len() + 1
    }
}

/// Checks that `batch` rows split evenly over `replicas`.
pub fn check_split(batch: usize, replicas: usize) -> Result<()> {
    ensure!(
        replicas >= 1,
        "--replicas 0: a run needs at least one replica"
    );
    ensure!(
        batch.is_multiple_of(replicas),
        "--batch {batch} does not split over --replicas {replicas}: the batch is the global \
         batch and each replica trains on batch / replicas rows, so give a batch that is a \
         multiple of {replicas}"
    );
    Ok(())
}

impl Trainer {
    /// Whether this is rank 0, the replica that decides ties and writes the
    /// run folder (every run without replicas is).
    pub(super) fn is_leader(&self) -> bool {
        self.comm.rank() == 0
    }

    /// This replica's rows of a batch of the global batch: inputs, targets
    /// and the number of rows.
    pub(super) fn my_rows<'a>(&self, b: &'a Batch) -> (&'a [u32], &'a [u32], usize) {
        let rows = b.rows / self.comm.world_size();
        let span = rows * b.context * self.comm.rank()..rows * b.context * (self.comm.rank() + 1);
        (&b.inputs[span.clone()], &b.targets[span], rows)
    }

    /// With replicas, the hook that sums each slot's gradient over the
    /// replicas as soon as the backward pass has completed it (see
    /// `Model::set_grad_ready`), and the addresses of those it summed.
    pub(super) fn overlapped_reduce(&self) -> Option<(GradReady, Arc<Mutex<Vec<u64>>>)> {
        if self.comm.world_size() == 1 {
            return None;
        }
        let (comm, done) = (self.comm.clone(), Arc::new(Mutex::new(Vec::new())));
        let summed = done.clone();
        let hook: GradReady = Arc::new(move |be: &dyn Backend, grads: View| {
            comm.all_reduce_sum_overlapped(be, grads)?;
            summed.lock().unwrap().push(grads.addr);
            Ok(())
        });
        Some((hook, done))
    }

    /// Sums the step's gradients and loss over the replicas (nothing with
    /// one replica): those the backward pass has not handed over already
    /// (`summed`: the globals, at least), then the loss; and orders what
    /// follows after every sum.
    pub(super) fn reduce_over_replicas(&self, summed: &[u64]) -> Result<()> {
        if self.comm.world_size() == 1 {
            return Ok(());
        }
        let be = self.model.backend().as_ref();
        let rest: Vec<View> = self
            .model
            .gradients_to_reduce()
            .into_iter()
            .filter(|g| !summed.contains(&g.addr))
            .collect();
        all_reduce_gradients(self.comm.as_ref(), be, &rest)?;
        self.comm.all_reduce_sum(be, self.opt.loss_sum().acc)?;
        self.comm.wait_overlapped(be)
    }

    /// After rank 0's agent step: rank 0 sends the action it applied (or
    /// none), the other ranks apply it, and every rank checks that its tie
    /// table is rank 0's.
    pub(super) fn share_tie_decision(&mut self, applied: Option<(usize, usize)>) -> Result<()> {
        if self.comm.world_size() == 1 {
            return Ok(());
        }
        let be = self.model.backend().clone();
        let mut message = match applied {
            Some((layer, action)) => [layer as u64, action as u64]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            None => Vec::new(),
        };
        self.comm.broadcast(be.as_ref(), 0, &mut message)?;
        if !self.is_leader() && !message.is_empty() {
            ensure!(
                message.len() == 16,
                "rank {}: a tie decision of {} bytes from rank 0 (expected 16)",
                self.comm.rank(),
                message.len()
            );
            let word = |i: usize| {
                u64::from_le_bytes(message[8 * i..8 * i + 8].try_into().unwrap()) as usize
            };
            self.model.apply_action(word(0), word(1))?;
        }
        self.check_same_table()
    }

    /// Compares a checksum of the tie table (blocks and slots) across ranks.
    pub(super) fn check_same_table(&self) -> Result<()> {
        let table = serde_json::to_vec(self.model.slots().table())?;
        same_on_every_rank(
            self.comm.as_ref(),
            self.model.backend().as_ref(),
            &format!("the tie table at step {}", self.step),
            checksum(&table),
        )
    }

    /// Makes the test fault meant for this replica at this step.
    pub(super) fn make_fault(&mut self) -> Result<()> {
        let Some(f) = self.fault else {
            return Ok(());
        };
        if f.rank != self.comm.rank() || f.step != self.step {
            return Ok(());
        }
        match f.kind {
            FaultKind::Error => bail!(
                "replica {} failed at step {} (a fault made by a test)",
                f.rank,
                f.step
            ),
            FaultKind::SkewTable => {
                if self.model.slots().table().state()[1] == 1 {
                    self.model.tie(1, 0)?;
                } else {
                    self.model.untie(1)?;
                }
                Ok(())
            }
        }
    }

    /// A replica of this trainer (rank 0, built and resumed as usual) on
    /// `backend`, built the way a replica in another process is: from this
    /// trainer's configuration and snapshot.
    fn replica_on(&self, backend: Arc<dyn Backend>) -> Result<Trainer> {
        Trainer::follower(self.cfg.clone(), &self.dir, backend, &self.snapshot()?)
    }

    /// What rank 0 of a run launched as several processes sends every
    /// other process: the run folder's name, the configuration and a
    /// snapshot of the state (weights, moments, optimizer, data position,
    /// tie table), so that a fresh run and a resumed one start the same way
    /// on every rank ([`Trainer::from_leader_message`]).
    pub fn leader_message(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for part in [
            self.dir.display().to_string().into_bytes(),
            self.cfg.to_toml().into_bytes(),
        ] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(&part);
        }
        out.extend_from_slice(&self.snapshot()?.to_bytes());
        Ok(out)
    }

    /// A replica on `backend` from rank 0's [`Trainer::leader_message`].
    /// Its dataset is opened where rank 0's configuration says (every
    /// machine needs it at that path).
    pub fn from_leader_message(message: &[u8], backend: Arc<dyn Backend>) -> Result<Trainer> {
        let mut rest = message;
        let mut part = || -> Result<String> {
            ensure!(rest.len() >= 8, "rank 0's message is cut short");
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            ensure!(rest.len() - 8 >= len, "rank 0's message is cut short");
            let text = String::from_utf8(rest[8..8 + len].to_vec())?;
            rest = &rest[8 + len..];
            Ok(text)
        };
        let dir = std::path::PathBuf::from(part()?);
        let cfg =
            crate::config::RunConfig::from_toml_str(&part()?).context("rank 0's configuration")?;
        let snapshot = Snapshot::from_bytes(rest)?;
        Trainer::follower(cfg, &dir, backend, &snapshot)
    }

    /// Makes this trainer rank `comm.rank()` of the group `comm`.
    pub fn join_group(&mut self, comm: Box<dyn Comm>) {
        self.comm = Arc::from(comm);
    }

    /// Trains as a replica that is not rank 0 (no agent, no run folder, no
    /// evaluation) until the run's last step. A Ctrl-C is left to rank 0,
    /// which stops with a checkpoint; this replica then stops because rank
    /// 0 left the group.
    pub fn train_as_follower(&mut self) -> Result<()> {
        ensure!(
            !self.is_leader(),
            "rank 0 trains with Trainer::run, not as a follower"
        );
        super::interrupt::install()?;
        self.train_until(self.cfg.train.steps as u64)
    }

    /// [`Trainer::run`] with `replicas`: this trainer is rank 0 and runs on
    /// the calling thread, every other rank on a thread of its own. Returns
    /// rank 0's summary, or the error that stopped the run first.
    pub fn run_replicated(&mut self, replicas: Replicas) -> Result<Summary> {
        let n = replicas.world_size();
        ensure!(
            replicas.joins.len() == n,
            "{} ways to join a group of {n} replicas",
            replicas.joins.len()
        );
        check_split(self.cfg.train.batch, n)?;
        let mut followers = replicas
            .backends
            .into_iter()
            .enumerate()
            .map(|(i, be)| {
                self.replica_on(be)
                    .with_context(|| format!("cannot build replica {}", i + 1))
            })
            .collect::<Result<Vec<_>>>()?;
        for f in &mut followers {
            f.fault = replicas.fault;
        }
        self.fault = replicas.fault;
        // The errors in the order they happened: the first is the cause,
        // the later ones mostly say that a replica left the group. Rank 0's
        // own error stays in its result (`None` here).
        let failures: Mutex<Vec<(usize, Option<anyhow::Error>)>> = Mutex::new(Vec::new());
        let mut joins = replicas.joins.into_iter();
        let leader_join = joins.next().expect("n >= 1 joins");
        let total = self.cfg.train.steps as u64;
        let summary = std::thread::scope(|scope| {
            let failures = &failures;
            for (i, (mut f, join)) in followers.into_iter().zip(joins).enumerate() {
                scope.spawn(move || {
                    let result = join().and_then(|comm| {
                        f.comm = Arc::from(comm);
                        f.train_until(total)
                    });
                    if let Err(e) = result {
                        failures.lock().unwrap().push((i + 1, Some(e)));
                    }
                    // Dropping the replica (and its comm) here, after its
                    // error is recorded, tells the others it left.
                    drop(f);
                });
            }
            let result = leader_join().and_then(|comm| {
                self.comm = Arc::from(comm);
                self.run()
            });
            if result.is_err() {
                failures.lock().unwrap().push((0, None));
            }
            // Leave the group (so a waiting replica errors instead of
            // waiting for ever) before the threads are joined.
            self.comm = Arc::new(Single::new());
            result
        });
        self.fault = None;
        let first = failures.into_inner().unwrap().into_iter().next();
        match first {
            // A replica failed first: its error is the cause (rank 0's
            // own error keeps its type, so an interrupted run exits with
            // the signal's status).
            Some((rank, Some(e))) => Err(e.context(format!(
                "replica {rank} of {n} failed, and the run stopped with it"
            ))),
            _ => summary,
        }
    }
}
