//! The CPU emulator itself: correct kernels give the same results under every
//! resume order, wrong ones are caught (different results, or a reported
//! error instead of a hang). Kernels: kernels/tests/emu_tests.cu, and
//! kernels/tests/strict_tests.cu for what must fail at launch or silently on
//! a GPU (poisoned shared memory, shared memory and register limits,
//! out-of-bounds accesses).

use dyntie::cuda::limits::{self, registers_per_block};
use dyntie::cuda::{Device, EmuConfig, EmuDevice, GpuLimits, LaunchDims, ResumeOrder};
use dyntie::mem::{Buffer, DType};
use dyntie::rng::HostRng;
use std::ffi::c_void;

const ORDERS: [ResumeOrder; 3] = [
    ResumeOrder::Forward,
    ResumeOrder::Reverse,
    ResumeOrder::Random(7),
];

fn device(order: ResumeOrder) -> EmuDevice {
    EmuDevice::with_config(EmuConfig {
        workers: 2,
        order,
        ..EmuConfig::default()
    })
}

fn arg<T>(v: &mut T) -> *mut c_void {
    v as *mut T as *mut c_void
}

fn dims(grid: u32, block: u32, shared_bytes: u32) -> LaunchDims {
    LaunchDims {
        grid: [grid, 1, 1],
        block: [block, 1, 1],
        shared_bytes,
    }
}

fn upload(dev: &EmuDevice, data: &[f32]) -> Buffer {
    let buf = Buffer::new(dev.memory(), DType::F32, data.len()).unwrap();
    dev.copy_htod(buf.addr(), bytemuck::cast_slice(data))
        .unwrap();
    buf
}

/// `len` values of `T` at device address `addr`.
fn download<T: bytemuck::Pod + Default>(dev: &EmuDevice, addr: u64, len: usize) -> Vec<T> {
    let mut out = vec![T::default(); len];
    dev.copy_dtoh(bytemuck::cast_slice_mut(&mut out), addr)
        .unwrap();
    out
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = HostRng::new(seed);
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn reduce(dev: &EmuDevice, kernel: &str, x: &[f32]) -> f32 {
    let xb = upload(dev, x);
    let out = upload(dev, &[0.0]);
    let (mut px, mut po, mut n) = (xb.addr(), out.addr(), x.len() as i32);
    unsafe {
        dev.launch(
            kernel,
            dims(7, 256, 0),
            &mut [arg(&mut px), arg(&mut po), arg(&mut n)],
        )
        .unwrap()
    };
    download::<f32>(dev, out.addr(), 1)[0]
}

#[test]
fn shared_memory_reduction_is_right_under_every_order() {
    let x = random(10_000, 1);
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    for order in ORDERS {
        let got = reduce(&device(order), "test_reduce_sum", &x);
        assert!(
            (got as f64 - want).abs() < 1e-3,
            "{order:?}: {got} vs {want}"
        );
    }
}

#[test]
fn a_missing_syncthreads_changes_results_with_the_order() {
    let x = random(10_000, 2);
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    let fwd = reduce(&device(ResumeOrder::Forward), "test_reduce_sum_no_sync", &x);
    let rev = reduce(&device(ResumeOrder::Reverse), "test_reduce_sum_no_sync", &x);
    assert_ne!(fwd, rev, "the race went unnoticed");
    // Reverse order happens to be the order the tree needs; forward is wrong
    // (NaN: thread 0 adds slots of poisoned shared memory no thread wrote yet).
    assert!(
        (rev as f64 - want).abs() < 1e-3 && fwd.is_nan(),
        "{fwd} {rev} {want}"
    );
}

fn launch_err(dev: &EmuDevice, kernel: &str, d: LaunchDims, args: &mut [*mut c_void]) -> String {
    match unsafe { dev.launch(kernel, d, args) } {
        Ok(()) => panic!("{kernel} should have failed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_early_return_before_a_barrier_is_reported() {
    for order in ORDERS {
        let dev = device(order);
        let out = upload(&dev, &[0.0; 64]);
        let (mut po, mut n) = (out.addr(), 40i32);
        let msg = launch_err(
            &dev,
            "test_early_return",
            dims(2, 64, 0),
            &mut [arg(&mut po), arg(&mut n)],
        );
        assert!(
            msg.contains("early return before a barrier"),
            "{order:?}: {msg}"
        );
        assert!(
            msg.contains("test_early_return") && msg.contains("block ("),
            "{msg}"
        );
    }
}

#[test]
fn an_early_return_can_be_allowed() {
    for order in ORDERS {
        let dev = EmuDevice::with_config(EmuConfig {
            order,
            allow_early_return: true,
            ..EmuConfig::default()
        });
        let out = upload(&dev, &[0.0; 64]);
        let (mut po, mut n) = (out.addr(), 40i32);
        unsafe {
            dev.launch(
                "test_early_return",
                dims(2, 64, 0),
                &mut [arg(&mut po), arg(&mut n)],
            )
        }
        .unwrap();
        let got: Vec<f32> = download(&dev, out.addr(), out.len());
        assert!(
            got[..40].iter().all(|&v| v == 1.0) && got[40..].iter().all(|&v| v == 0.0),
            "{order:?}"
        );
    }
}

#[test]
fn a_shuffle_by_half_a_warp_is_reported() {
    let dev = device(ResumeOrder::Forward);
    let out = upload(&dev, &[0.0; 32]);
    let mut po = out.addr();
    let msg = launch_err(
        &dev,
        "test_half_warp_shuffle",
        dims(1, 32, 0),
        &mut [arg(&mut po)],
    );
    assert!(
        msg.contains("does not include it") && msg.contains("0x0000ffff"),
        "{msg}"
    );
}

#[test]
fn mismatched_warp_collectives_are_reported() {
    for order in ORDERS {
        let dev = device(order);
        let out = Buffer::new(dev.memory(), DType::F32, 32).unwrap();
        let mut po = out.addr();
        let msg = launch_err(
            &dev,
            "test_mismatched_collectives",
            dims(1, 32, 0),
            &mut [arg(&mut po)],
        );
        assert!(
            msg.contains("mismatched warp collectives"),
            "{order:?}: {msg}"
        );
        assert!(
            msg.contains("__shfl_xor_sync") && msg.contains("__ballot_sync"),
            "{msg}"
        );
    }
}

#[test]
fn a_deadlock_is_reported_not_hung() {
    for order in ORDERS {
        let dev = device(order);
        let out = upload(&dev, &[0.0; 64]);
        let mut po = out.addr();
        let msg = launch_err(&dev, "test_deadlock", dims(1, 64, 0), &mut [arg(&mut po)]);
        assert!(msg.contains("deadlock"), "{msg}");
        assert!(
            msg.contains("63 of 64 live threads wait at __syncthreads"),
            "{msg}"
        );
        assert!(
            msg.contains("warp 1: lanes 0x00000001 wait in __syncwarp"),
            "{msg}"
        );
    }
}

#[test]
fn warp_collectives_are_right_under_every_order() {
    for order in ORDERS {
        let dev = device(order);
        let out = Buffer::new(dev.memory(), DType::U32, 64 * 8).unwrap();
        let mut po = out.addr();
        unsafe {
            dev.launch("test_warp_collectives", dims(1, 64, 0), &mut [arg(&mut po)])
                .unwrap()
        };
        let got: Vec<i32> = download(&dev, out.addr(), 64 * 8);
        for t in 0..64i32 {
            let (lane, warp0) = (t % 32, t - t % 32);
            let o = &got[t as usize * 8..t as usize * 8 + 8];
            let seg = lane - lane % 16;
            let want = [
                (warp0..warp0 + 32).sum::<i32>(),
                warp0 + 3,
                if lane >= 1 { t - 1 } else { t },
                if lane + 2 < seg + 16 { t + 2 } else { t },
                0xAAAA_AAAAu32 as i32,
                1,
                0,
                if lane < 16 { t ^ 1 } else { -1 },
            ];
            assert_eq!(o, want, "{order:?} thread {t}");
        }
    }
}

#[test]
fn atomics_from_many_blocks() {
    let dev = device(ResumeOrder::Random(3));
    let count = Buffer::new(dev.memory(), DType::U32, 1).unwrap();
    let fsum = Buffer::new(dev.memory(), DType::F32, 1).unwrap();
    let imax = Buffer::new(dev.memory(), DType::U32, 1).unwrap();
    let imin = Buffer::new(dev.memory(), DType::U32, 1).unwrap();
    let (mut a, mut b, mut c, mut d) = (count.addr(), fsum.addr(), imax.addr(), imin.addr());
    let (blocks, threads) = (200u32, 128u32);
    unsafe {
        dev.launch(
            "test_atomics",
            dims(blocks, threads, 0),
            &mut [arg(&mut a), arg(&mut b), arg(&mut c), arg(&mut d)],
        )
        .unwrap()
    };
    let total = blocks * threads;
    assert_eq!(download::<u32>(&dev, count.addr(), 1)[0], total);
    assert_eq!(download::<f32>(&dev, fsum.addr(), 1)[0], total as f32 * 0.5);
    assert_eq!(download::<i32>(&dev, imax.addr(), 1)[0], total as i32 - 1);
    assert_eq!(download::<i32>(&dev, imin.addr(), 1)[0], 1 - total as i32);
}

#[test]
fn dynamic_shared_memory_is_nan_before_every_block() {
    // One worker, so later blocks reuse the buffer earlier blocks wrote.
    let dev = EmuDevice::with_config(EmuConfig {
        workers: 1,
        ..EmuConfig::default()
    });
    let (blocks, threads, per) = (3u32, 64u32, 4i32);
    let n = (blocks * threads) as usize * per as usize;
    let out = upload(&dev, &vec![0.0; n]);
    let (mut po, mut pp) = (out.addr(), per);
    let smem = threads * per as u32 * 4;
    unsafe {
        dev.launch(
            "test_dyn_smem_probe",
            dims(blocks, threads, smem),
            &mut [arg(&mut po), arg(&mut pp)],
        )
        .unwrap()
    };
    assert!(download::<f32>(&dev, out.addr(), out.len())
        .iter()
        .all(|v| v.is_nan()));
}

#[test]
fn launch_errors_are_results() {
    let dev = device(ResumeOrder::Forward);
    let msg = launch_err(&dev, "no_such_kernel", dims(1, 32, 0), &mut []);
    assert!(msg.contains("no kernel named `no_such_kernel`"), "{msg}");
    let out = upload(&dev, &[0.0; 32]);
    let mut po = out.addr();
    let msg = launch_err(
        &dev,
        "test_half_warp_shuffle",
        dims(1, 2048, 0),
        &mut [arg(&mut po)],
    );
    assert!(msg.contains("1 to 1024"), "{msg}");
}

#[test]
fn tiled_matmul_matches_and_reports_its_speed() {
    let n = 256usize;
    let a = random(n * n, 4);
    let b = random(n * n, 5);
    let dev = device(ResumeOrder::Forward);
    let (ab, bb) = (upload(&dev, &a), upload(&dev, &b));
    let cb = Buffer::new(dev.memory(), DType::F32, n * n).unwrap();
    let (mut pc, mut pa, mut pb, mut pn) = (cb.addr(), ab.addr(), bb.addr(), n as i32);
    let d = LaunchDims {
        grid: [16, 16, 1],
        block: [16, 16, 1],
        shared_bytes: 0,
    };
    let mut run = || unsafe {
        dev.launch(
            "test_matmul_tiled",
            d,
            &mut [arg(&mut pc), arg(&mut pa), arg(&mut pb), arg(&mut pn)],
        )
    };
    // The first launch also maps and touches the fiber stacks.
    let first = dev.time_ms(&mut run).unwrap();
    let again = dev.time_ms(&mut run).unwrap();
    eprintln!("emulated 256^3 tiled matmul: {first:.1} ms first launch, {again:.1} ms after");
    let c: Vec<f32> = download(&dev, cb.addr(), cb.len());
    for (i, j) in [(0, 0), (17, 200), (255, 255), (128, 3)] {
        let want: f64 = (0..n)
            .map(|k| a[i * n + k] as f64 * b[k * n + j] as f64)
            .sum();
        assert!(
            (c[i * n + j] as f64 - want).abs() < 1e-3,
            "c[{i},{j}] {} vs {want}",
            c[i * n + j]
        );
    }
}

#[test]
fn kernel_registry_lists_every_kernel() {
    let names = dyntie::cuda::emu::kernel_names();
    for k in [
        "elementwise_fill_f32",
        "activation_dropout_bwd_f32",
        "test_reduce_sum",
        "test_matmul_tiled",
    ] {
        assert!(names.iter().any(|n| n == k), "{k} missing from {names:?}");
    }
}

#[test]
fn a_fiber_stack_overflow_is_named_before_the_crash() {
    // The overflow kills the process, so it runs in a child copy of this test.
    if std::env::var_os("DYNTIE_EMU_OVERFLOW_CHILD").is_some() {
        let dev = device(ResumeOrder::Forward);
        let out = upload(&dev, &[0.0; 32]);
        let (mut po, mut n) = (out.addr(), 32768i32);
        let _ = unsafe {
            dev.launch(
                "test_stack_overflow",
                dims(1, 32, 0),
                &mut [arg(&mut po), arg(&mut n)],
            )
        };
        return;
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_fiber_stack_overflow_is_named_before_the_crash",
            "--exact",
            "--nocapture",
        ])
        .env("DYNTIE_EMU_OVERFLOW_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(
        !child.status.success(),
        "the overflow went unnoticed: {stderr}"
    );
    assert!(stderr.contains("overflowed its fiber stack"), "{stderr}");
}

#[test]
fn a_bigger_stack_fits_big_locals() {
    let dev = EmuDevice::with_config(EmuConfig {
        stack_bytes: 256 << 10,
        ..EmuConfig::default()
    });
    let out = upload(&dev, &[0.0; 32]);
    let (mut po, mut n) = (out.addr(), 32768i32);
    unsafe {
        dev.launch(
            "test_stack_overflow",
            dims(1, 32, 0),
            &mut [arg(&mut po), arg(&mut n)],
        )
    }
    .unwrap();
    let got: Vec<f32> = download(&dev, out.addr(), out.len());
    assert!(got
        .iter()
        .enumerate()
        .all(|(t, &v)| v == (32767 - t) as f32));
}

// ---- the stricter checks: kernels/tests/strict_tests.cu -------------------------

#[test]
fn static_shared_memory_is_nan_before_every_block() {
    // One worker, so later blocks reuse the arena earlier blocks wrote.
    let dev = EmuDevice::with_config(EmuConfig {
        workers: 1,
        ..EmuConfig::default()
    });
    let (blocks, threads, per) = (3u32, 64u32, 16i32);
    let out = upload(&dev, &vec![0.0; (blocks * threads) as usize * per as usize]);
    let (mut po, mut pp) = (out.addr(), per);
    unsafe {
        dev.launch(
            "test_static_smem_probe",
            dims(blocks, threads, 0),
            &mut [arg(&mut po), arg(&mut pp)],
        )
        .unwrap()
    };
    assert!(download::<f32>(&dev, out.addr(), out.len())
        .iter()
        .all(|v| v.is_nan()));
}

fn sum_assuming_256_threads(dev: &EmuDevice, x: &[f32], threads: u32) -> f32 {
    let xb = upload(dev, x);
    let out = upload(dev, &[0.0]);
    let (mut px, mut po, mut n) = (xb.addr(), out.addr(), x.len() as i32);
    unsafe {
        dev.launch(
            "test_sum_assumes_256_threads",
            dims(5, threads, 0),
            &mut [arg(&mut px), arg(&mut po), arg(&mut n)],
        )
        .unwrap()
    };
    download::<f32>(dev, out.addr(), out.len())[0]
}

#[test]
fn a_reduction_that_reads_unwritten_shared_memory_gives_nan() {
    let x = random(5000, 9);
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    for order in ORDERS {
        let dev = device(order);
        let right = sum_assuming_256_threads(&dev, &x, 256);
        assert!((right as f64 - want).abs() < 1e-3, "{order:?}: {right}");
        // With 160 threads the tree adds slots 160..255, which no thread wrote.
        let wrong = sum_assuming_256_threads(&dev, &x, 160);
        assert!(wrong.is_nan(), "{order:?}: {wrong} (want {want})");
    }
}

/// Launches test_static_and_dynamic_smem (16 KiB static) with `dynamic` bytes
/// of dynamic shared memory and checks its result.
fn static_and_dynamic(dev: &EmuDevice, dynamic: u32) -> anyhow::Result<()> {
    let out = upload(dev, &[0.0; 64]);
    let mut po = out.addr();
    unsafe {
        dev.launch(
            "test_static_and_dynamic_smem",
            dims(2, 64, dynamic),
            &mut [arg(&mut po)],
        )
    }?;
    let got = download::<f32>(dev, out.addr(), out.len());
    assert!(got.iter().enumerate().all(|(t, &v)| v == t as f32 + 1.0));
    Ok(())
}

fn device_for(gpu: GpuLimits, ptxas_report: bool) -> EmuDevice {
    EmuDevice::with_config(EmuConfig {
        workers: 2,
        gpu,
        ptxas_report,
        ..EmuConfig::default()
    })
}

#[test]
fn shared_memory_over_48_kib_needs_the_opt_in() {
    // With the ptxas report the static 16 KiB are known before the launch;
    // without it (a build without the CUDA tools) the emulator finds them as
    // the kernel declares them. Either way: refused without the opt-in.
    for ptxas_report in [true, false] {
        let dev = device_for(GpuLimits::SM80, ptxas_report);
        static_and_dynamic(&dev, 32 << 10).unwrap();
        let msg = static_and_dynamic(&dev, 33 << 10).unwrap_err().to_string();
        assert!(
            msg.contains("test_static_and_dynamic_smem")
                && msg.contains("16384 bytes of static + 33792 of dynamic")
                && msg.contains("without the opt-in")
                && msg.contains("CUDA_ERROR_INVALID_VALUE"),
            "{msg}"
        );
        dev.set_max_dynamic_shared("test_static_and_dynamic_smem", 33 << 10)
            .unwrap();
        static_and_dynamic(&dev, 33 << 10).unwrap();
        // The opt-in covers this much and no more.
        let msg = static_and_dynamic(&dev, 34 << 10).unwrap_err().to_string();
        assert!(msg.contains("more than the 33792 it opted in to"), "{msg}");
    }
}

#[test]
fn shared_memory_over_the_architecture_limit_is_refused() {
    // 16 KiB static + 150 KiB dynamic: over sm_80's 163 KiB, within sm_90's 227 KiB.
    let dynamic = 150 << 10;
    let kernel = "test_static_and_dynamic_smem";
    let sm90 = device_for(GpuLimits::SM90, true);
    sm90.set_max_dynamic_shared(kernel, dynamic).unwrap();
    static_and_dynamic(&sm90, dynamic).unwrap();
    let msg = sm90
        .set_max_dynamic_shared(kernel, 228 << 10)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("232448 a block may have on sm_90"), "{msg}");

    // Without the report the opt-in cannot see the static part; the launch
    // then fails as the kernel declares it.
    let sm80 = device_for(GpuLimits::SM80, false);
    sm80.set_max_dynamic_shared(kernel, dynamic).unwrap();
    let msg = static_and_dynamic(&sm80, dynamic).unwrap_err().to_string();
    assert!(
        msg.contains("16384 bytes of static shared memory + the 153600 bytes")
            && msg.contains("166912 bytes a block may have on sm_80")
            && msg.contains("CUDA_ERROR_INVALID_VALUE")
            && msg.contains("block ("),
        "{msg}"
    );
    if limits::ptxas_report_available() {
        let sm80 = device_for(GpuLimits::SM80, true);
        let msg = sm80
            .set_max_dynamic_shared(kernel, dynamic)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("153600 bytes of dynamic + 16384 of static")
                && msg.contains("166912 a block may have on sm_80"),
            "{msg}"
        );
    }
}

#[test]
fn a_write_past_the_end_is_found_in_the_red_zone() {
    let dev = device(ResumeOrder::Forward);
    // 4000 bytes: the allocation's 256-byte rounding leaves a 96-byte red zone.
    let out = Buffer::new(dev.memory(), DType::F32, 1000).unwrap();
    let launch = |overrun: i32| {
        let (mut po, mut n, mut o) = (out.addr(), 1000i32, overrun);
        unsafe {
            dev.launch(
                "test_write_past_end",
                dims(1, 64, 0),
                &mut [arg(&mut po), arg(&mut n), arg(&mut o)],
            )
        }
    };
    let msg = launch(3).unwrap_err().to_string();
    assert!(
        msg.contains("kernel test_write_past_end wrote out of bounds")
            && msg.contains(&format!("allocation at {:#x}", out.addr()))
            && msg.contains("tail red zone was written, at offsets +0 to +11 from its end"),
        "{msg}"
    );
    // The red zone is whole again: a right launch passes.
    launch(0).unwrap();
}

#[test]
fn a_read_far_out_of_bounds_names_the_block_and_thread() {
    for order in ORDERS {
        let dev = device(order);
        let x = random(1000, 3);
        let inp = upload(&dev, &x);
        let out = Buffer::new(dev.memory(), DType::F32, 4 * 64).unwrap();
        let launch = |index: i64| {
            let (mut pi, mut po, mut i) = (inp.addr(), out.addr(), index);
            unsafe {
                dev.launch(
                    "test_read_at",
                    dims(4, 64, 0),
                    &mut [arg(&mut pi), arg(&mut po), arg(&mut i)],
                )
            }
        };
        // 160 bytes past the 4000: beyond the red zone, in the guard page.
        let msg = launch(1040).unwrap_err().to_string();
        assert!(
            msg.contains("kernel test_read_at: block (1,0,0) thread (5,0,0)")
                && msg.contains("invalid read of global memory")
                && msg.contains(&format!(
                    "160 bytes past the end of the allocation at {:#x} (4000 bytes), in its guard page",
                    inp.addr()
                )),
            "{order:?}: {msg}"
        );
        // The process and the device live on.
        launch(10).unwrap();
        assert_eq!(download::<f32>(&dev, out.addr(), out.len())[64 + 5], x[10]);
    }
}

#[test]
fn a_write_before_the_start_is_reported() {
    let dev = device(ResumeOrder::Forward);
    let launch = |buf: &Buffer| {
        let mut po = buf.addr();
        launch_err(
            &dev,
            "test_write_before_start",
            dims(1, 32, 0),
            &mut [arg(&mut po)],
        )
    };
    // 4096 bytes fill their pages: the guard page comes right before the start.
    let whole = Buffer::new(dev.memory(), DType::F32, 1024).unwrap();
    let msg = launch(&whole);
    assert!(
        msg.contains("block (0,0,0) thread (0,0,0)")
            && msg.contains("invalid write of global memory")
            && msg.contains("4 bytes before the start")
            && msg.contains("in its guard page"),
        "{msg}"
    );
    // 3840 bytes leave 256 bytes of head red zone on the page.
    let short = Buffer::new(dev.memory(), DType::F32, 960).unwrap();
    let msg = launch(&short);
    assert!(
        msg.contains("head red zone was written, at offsets -4 to -1 from its start"),
        "{msg}"
    );
}

#[test]
fn bad_pointers_and_argument_counts_are_refused() {
    let dev = device(ResumeOrder::Forward);
    let (mut n, mut o) = (64i32, 0i32);
    let freed = Buffer::new(dev.memory(), DType::F32, 64).unwrap().addr();
    let mut pf = freed;
    let msg = launch_err(
        &dev,
        "test_write_past_end",
        dims(1, 32, 0),
        &mut [arg(&mut pf), arg(&mut n), arg(&mut o)],
    );
    assert!(
        msg.contains("pointer argument 0")
            && msg.contains("not in or next to any live emulator allocation"),
        "{msg}"
    );
    // A null pointer passes the launch checks but not the write.
    let mut null = 0u64;
    let msg = launch_err(
        &dev,
        "test_write_past_end",
        dims(1, 32, 0),
        &mut [arg(&mut null), arg(&mut n), arg(&mut o)],
    );
    assert!(
        msg.contains("invalid write of global memory at 0x0")
            && msg.contains("a null, freed or wild pointer"),
        "{msg}"
    );
    let out = Buffer::new(dev.memory(), DType::F32, 64).unwrap();
    let mut po = out.addr();
    let msg = launch_err(
        &dev,
        "test_write_past_end",
        dims(1, 32, 0),
        &mut [arg(&mut po), arg(&mut n)],
    );
    assert!(
        msg.contains("takes 3 parameters but the launch passes 2"),
        "{msg}"
    );
}

#[test]
fn copies_out_of_bounds_are_errors() {
    let dev = device(ResumeOrder::Forward);
    let buf = Buffer::new(dev.memory(), DType::F32, 25).unwrap();
    let msg = dev
        .copy_htod(buf.addr(), &[0u8; 101])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("run 1 bytes past the end"), "{msg}");
    let msg = dev.memset(buf.addr() + 50, 0, 51).unwrap_err().to_string();
    assert!(msg.contains("run 1 bytes past the end"), "{msg}");
    dev.copy_htod(buf.addr() + 50, &[1u8; 50]).unwrap();
}

#[test]
fn every_kernel_has_a_ptxas_report_when_the_tools_were_found() {
    let built = !dyntie::cuda::gpu_build_info().starts_with("built without");
    assert_eq!(built, limits::ptxas_report_available());
    if !built {
        assert!(limits::ptxas_report_status().starts_with("unavailable"));
        eprintln!("skipped: {}", limits::ptxas_report_status());
        return;
    }
    for kernel in dyntie::cuda::emu::kernel_names() {
        for arch in [80, 90] {
            assert!(
                limits::ptxas_report(&kernel, arch).is_some(),
                "{kernel} sm_{arch}"
            );
        }
    }
}

#[test]
fn a_block_with_more_registers_than_an_sm_has_is_refused() {
    let Some(report) = limits::ptxas_report("test_many_registers", 80) else {
        eprintln!("skipped: {}", limits::ptxas_report_status());
        return;
    };
    assert!(report.registers > 64, "{report:?}");
    assert!(registers_per_block(report.registers, 1024) > 65536);
    let dev = device(ResumeOrder::Forward);
    let x = random(200, 6);
    let inp = upload(&dev, &x);
    let out = Buffer::new(dev.memory(), DType::F32, 1024).unwrap();
    let launch = |threads: u32| {
        let (mut po, mut pi, mut n) = (out.addr(), inp.addr(), x.len() as i32);
        unsafe {
            dev.launch(
                "test_many_registers",
                dims(1, threads, 0),
                &mut [arg(&mut po), arg(&mut pi), arg(&mut n)],
            )
        }
    };
    let msg = launch(1024).unwrap_err().to_string();
    assert!(
        msg.contains("kernel test_many_registers")
            && msg.contains(&format!("{} registers per thread", report.registers))
            && msg.contains("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"),
        "{msg}"
    );
    launch(256).unwrap();
    let got = download::<f32>(&dev, out.addr(), out.len());
    for t in [0usize, 77, 255] {
        let v: Vec<f64> = (0..96).map(|k| x[(k * 37 + t) % x.len()] as f64).collect();
        let scale: f64 = v.iter().enumerate().map(|(k, a)| a * (k + 1) as f64).sum();
        let want: f64 = v.iter().map(|a| a * a * scale).sum();
        assert!(
            (got[t] as f64 - want).abs() < 1e-3 * want.abs().max(1.0),
            "thread {t}: {} vs {want}",
            got[t]
        );
    }
}
