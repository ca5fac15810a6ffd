//! One replica: every collective is the identity.

use std::sync::Mutex;

use anyhow::{bail, Result};

use super::{check_all_reduce, Comm, CommStats};
use crate::mem::View;
use crate::ops::Backend;

/// The [`Comm`] of a run on one device.
#[derive(Default)]
pub struct Single {
    stats: Mutex<CommStats>,
}

impl Single {
    pub fn new() -> Self {
        Single::default()
    }
}

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _be: &dyn Backend, buf: View) -> Result<()> {
        check_all_reduce(buf)?;
        let mut stats = self.stats.lock().unwrap();
        stats.all_reduces += 1;
        stats.all_reduce_bytes += buf.bytes() as u64;
        Ok(())
    }

    fn broadcast(&self, _be: &dyn Backend, root: usize, _bytes: &mut Vec<u8>) -> Result<()> {
        if root != 0 {
            bail!("broadcast from rank {root}, but this run has one replica (rank 0)");
        }
        self.stats.lock().unwrap().broadcasts += 1;
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }

    fn stats(&self) -> CommStats {
        *self.stats.lock().unwrap()
    }
}
