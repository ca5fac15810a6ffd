//! CPU reference of `ops::elementwise`.

use super::{read, read_floats, write, write_floats, CpuOp, CHUNK};
use crate::mem::DType;
use crate::ops::elementwise::{Accumulate, Add, Cast, CopyView, Fill};
use anyhow::Result;
use half::bf16;
use rayon::prelude::*;

impl CpuOp for Fill {
    fn run(&self) -> Result<()> {
        // SAFETY (every op of this file): the contract check passed; see `read`.
        let mut dst = unsafe { write_floats(self.dst, self.dst.len) };
        fill(&mut dst, self.value);
        dst.store();
        Ok(())
    }
}

impl CpuOp for CopyView {
    fn run(&self) -> Result<()> {
        // The contract allows `dst` to be exactly `src`: nothing to do.
        if self.dst.addr == self.src.addr {
            return Ok(());
        }
        // The same dtype on both sides: the values as they are.
        let n = self.dst.len;
        match self.dst.dtype {
            DType::BF16 => unsafe { write::<bf16>(self.dst, n).copy_from_slice(read(self.src, n)) },
            _ => unsafe { write::<f32>(self.dst, n).copy_from_slice(read(self.src, n)) },
        }
        Ok(())
    }
}

impl CpuOp for Cast {
    fn run(&self) -> Result<()> {
        let n = self.dst.len;
        let src = unsafe { read_floats(self.src, n) };
        let mut dst = unsafe { write_floats(self.dst, n) };
        dst.copy_from_slice(&src);
        dst.store();
        Ok(())
    }
}

impl CpuOp for Add {
    fn run(&self) -> Result<()> {
        let (out, a, b, n) = (self.out, self.a, self.b, self.out.len);
        if out.dtype == DType::BF16 {
            // Widened copies: an aliased `out` is read from its own copy.
            let (x, y) = unsafe { (read_floats(a, n), read_floats(b, n)) };
            let mut o = unsafe { write_floats(out, n) };
            add(&mut o, &x, &y);
            o.store();
            return Ok(());
        }
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
        let src = unsafe { read_floats(self.src, n) };
        let mut dst = unsafe { write_floats(self.dst, n) };
        accumulate(&mut dst, &src);
        dst.store();
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
