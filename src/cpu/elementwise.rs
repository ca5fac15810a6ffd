//! CPU reference of `ops::elementwise`.

use super::{read, write, CpuOp, CHUNK};
use crate::ops::elementwise::{Accumulate, Add, CopyView, Fill};
use anyhow::Result;
use rayon::prelude::*;

impl CpuOp for Fill {
    fn run(&self) -> Result<()> {
        // SAFETY (every op of this file): the contract check passed; see `read`.
        fill(unsafe { write(self.dst, self.dst.len) }, self.value);
        Ok(())
    }
}

impl CpuOp for CopyView {
    fn run(&self) -> Result<()> {
        let n = self.dst.len;
        // The contract allows `dst` to be exactly `src`: nothing to do.
        if self.dst.addr != self.src.addr {
            unsafe { write::<f32>(self.dst, n).copy_from_slice(read(self.src, n)) };
        }
        Ok(())
    }
}

impl CpuOp for Add {
    fn run(&self) -> Result<()> {
        let (out, a, b, n) = (self.out, self.a, self.b, self.out.len);
        // `out` may be exactly `a` or `b`: then the op is an accumulation,
        // and only the `&mut` slice of the shared memory is made.
        match (out.addr == a.addr, out.addr == b.addr) {
            (true, true) => scale(unsafe { write(out, n) }, 2.0),
            (true, false) => accumulate(unsafe { write(out, n) }, unsafe { read(b, n) }),
            (false, true) => accumulate(unsafe { write(out, n) }, unsafe { read(a, n) }),
            (false, false) => add(unsafe { write(out, n) }, unsafe { read(a, n) }, unsafe {
                read(b, n)
            }),
        }
        Ok(())
    }
}

impl CpuOp for Accumulate {
    fn run(&self) -> Result<()> {
        let n = self.dst.len;
        accumulate(unsafe { write(self.dst, n) }, unsafe { read(self.src, n) });
        Ok(())
    }
}

fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}

fn accumulate(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                *d += s;
            }
        });
}

fn scale(dst: &mut [f32], factor: f32) {
    dst.par_chunks_mut(CHUNK).for_each(|d| {
        for d in d {
            *d *= factor;
        }
    });
}

fn fill(dst: &mut [f32], value: f32) {
    dst.par_chunks_mut(CHUNK).for_each(|d| d.fill(value));
}
