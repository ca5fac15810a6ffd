//! Replicas as threads of one process: the fake [`Comm`] that tests use.
//!
//! Every collective is one exchange: each rank leaves its bytes (and the
//! name of the collective it is in) at a meeting point, the last to arrive
//! publishes all of them, and each rank then computes the result itself
//! from the same inputs in rank order, so every rank gets the same bits, as
//! with NCCL. The data goes through host memory (a download and an upload
//! per all-reduce): slow, and it does not matter for what this is for,
//! which is testing on the CPU and under the emulator that replicas stay in
//! step.
//!
//! A rank that drops its `InProcess` (its thread returned, perhaps with an
//! error) breaks the group: every rank waiting in or later entering a
//! collective gets an error instead of waiting for ever.

use std::sync::{Arc, Condvar, Mutex};

use anyhow::{bail, Result};

use super::{check_all_reduce, sum_in_rank_order, Comm, CommStats};
use crate::mem::View;
use crate::ops::{Backend, BackendExt};

/// One rank of a group made by [`InProcess::group`].
pub struct InProcess {
    rank: usize,
    group: Arc<Group>,
    stats: Mutex<CommStats>,
}

struct Group {
    size: usize,
    state: Mutex<Meeting>,
    done: Condvar,
}

/// What each rank brought to one collective: its name and the bytes.
type Deposits = Vec<(String, Vec<u8>)>;

struct Meeting {
    deposits: Vec<Option<(String, Vec<u8>)>>,
    arrived: usize,
    /// Counts completed exchanges; a waiting rank leaves when it moves on.
    generation: u64,
    /// The deposits of the last completed exchange.
    published: Arc<Deposits>,
    /// Why the group cannot go on (a rank left).
    broken: Option<String>,
}

impl InProcess {
    /// `size` connected ranks, to be moved one to each replica's thread.
    pub fn group(size: usize) -> Result<Vec<InProcess>> {
        if size == 0 {
            bail!("a group of replicas needs at least one rank");
        }
        let group = Arc::new(Group {
            size,
            state: Mutex::new(Meeting {
                deposits: vec![None; size],
                arrived: 0,
                generation: 0,
                published: Arc::new(vec![]),
                broken: None,
            }),
            done: Condvar::new(),
        });
        Ok((0..size)
            .map(|rank| InProcess {
                rank,
                group: group.clone(),
                stats: Mutex::new(CommStats::default()),
            })
            .collect())
    }

    /// Leaves `bytes` under the name `what`, waits for every rank, and
    /// returns what each rank left, in rank order. Fails on every rank when
    /// the ranks are not in the same collective.
    fn exchange(&self, what: String, bytes: Vec<u8>) -> Result<Arc<Deposits>> {
        let mut m = self.group.state.lock().unwrap();
        if let Some(why) = &m.broken {
            bail!("rank {}: {what}: {why}", self.rank);
        }
        m.deposits[self.rank] = Some((what.clone(), bytes));
        m.arrived += 1;
        if m.arrived == self.group.size {
            let all = m.deposits.iter_mut().map(|d| d.take().unwrap()).collect();
            m.published = Arc::new(all);
            m.arrived = 0;
            m.generation += 1;
            self.group.done.notify_all();
        } else {
            let generation = m.generation;
            while m.generation == generation {
                if let Some(why) = &m.broken {
                    bail!("rank {}: {what}: {why}", self.rank);
                }
                m = self.group.done.wait(m).unwrap();
            }
        }
        let all = m.published.clone();
        drop(m);
        if let Some((rank, (other, _))) = all.iter().enumerate().find(|(_, (w, _))| *w != what) {
            bail!(
                "replicas out of step: rank {} called {what} while rank {rank} called {other}",
                self.rank
            );
        }
        Ok(all)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let mut m = self.group.state.lock().unwrap();
        if m.broken.is_none() {
            m.broken = Some(format!("rank {} left the group", self.rank));
        }
        self.group.done.notify_all();
    }
}

impl Comm for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.size
    }

    fn all_reduce_sum(&self, be: &dyn Backend, buf: View) -> Result<()> {
        check_all_reduce(buf)?;
        let mine = be.download::<f32>(buf)?;
        let all = self.exchange(
            format!("all-reduce of {} floats", buf.len),
            bytemuck::cast_slice(&mine).to_vec(),
        )?;
        let bytes: Vec<Vec<u8>> = all.iter().map(|(_, b)| b.clone()).collect();
        be.upload(buf, &sum_in_rank_order(&bytes))?;
        let mut stats = self.stats.lock().unwrap();
        stats.all_reduces += 1;
        stats.all_reduce_bytes += buf.bytes() as u64;
        Ok(())
    }

    fn broadcast(&self, _be: &dyn Backend, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        if root >= self.group.size {
            bail!(
                "broadcast from rank {root}, but the group has {} ranks",
                self.group.size
            );
        }
        let all = self.exchange(format!("broadcast from rank {root}"), bytes.clone())?;
        bytes.clone_from(&all[root].1);
        self.stats.lock().unwrap().broadcasts += 1;
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.exchange("barrier".into(), vec![]).map(|_| ())
    }

    fn stats(&self) -> CommStats {
        *self.stats.lock().unwrap()
    }
}
