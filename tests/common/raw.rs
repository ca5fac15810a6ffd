//! Launching kernels by name on an `EmuDevice` directly, below the Backend
//! trait: typed uploads and downloads, argument pointers, bf16 inputs.
#![allow(dead_code)]

use dyntie::cuda::{Device, EmuDevice};
use dyntie::mem::{Buffer, Element};
use dyntie::rng::HostRng;
use half::bf16;
use std::ffi::c_void;

/// One kernel argument, as `Device::launch` takes it.
pub fn arg<T>(v: &mut T) -> *mut c_void {
    v as *mut T as *mut c_void
}

/// A new buffer holding `data` (at least 16 bytes, so it is never empty).
pub fn upload<T: Element>(dev: &EmuDevice, data: &[T]) -> Buffer {
    let len = data.len().max(16 / T::DTYPE.size());
    let buf = Buffer::new(dev.memory(), T::DTYPE, len).unwrap();
    dev.copy_htod(buf.addr(), bytemuck::cast_slice(data))
        .unwrap();
    buf
}

/// The first `len` elements of `buf`.
pub fn download<T: Element + Default>(dev: &EmuDevice, buf: &Buffer, len: usize) -> Vec<T> {
    let mut out = vec![T::default(); len];
    dev.copy_dtoh(bytemuck::cast_slice_mut(&mut out), buf.addr())
        .unwrap();
    out
}

/// Standard normal samples rounded to bf16.
pub fn random_bf16(n: usize, seed: u64) -> Vec<bf16> {
    let mut rng = HostRng::new(seed);
    (0..n).map(|_| bf16::from_f64(rng.normal())).collect()
}
