//! The replicas' collectives (src/dist): the in-process group that tests
//! data-parallel training on the CPU and under the emulator, the
//! single-replica no-op, and NCCL's clear error where it is not installed.

use std::thread;

use dyntie::cpu::CpuBackend;
use dyntie::cuda::{EmuDevice, KernelBackend};
use dyntie::dist::{checksum, same_on_every_rank, Comm, InProcess, Nccl, Single};
use dyntie::mem::DType;
use dyntie::ops::{Backend, BackendExt};

type MakeBackend = fn() -> Box<dyn Backend>;

fn cpu() -> Box<dyn Backend> {
    Box::new(CpuBackend::new())
}

fn emu() -> Box<dyn Backend> {
    Box::new(KernelBackend::new(EmuDevice::new()))
}

/// Runs `work(rank's comm, rank's backend)` on one thread per rank and
/// returns each rank's result, in rank order.
fn on_every_rank<T: Send + 'static>(
    size: usize,
    backend: MakeBackend,
    work: fn(&InProcess, &dyn Backend) -> T,
) -> Vec<T> {
    let threads: Vec<_> = InProcess::group(size)
        .unwrap()
        .into_iter()
        .map(|comm| thread::spawn(move || work(&comm, backend().as_ref())))
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Rank r's gradient: values that do not add up exactly in fp32, so a
/// different summation order on some rank would show.
fn gradient(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + rank * 13) % 17) as f32 * 0.1 + 1e-7 * (rank + 1) as f32)
        .collect()
}

fn all_reduce_on(size: usize, backend: MakeBackend) {
    const LEN: usize = 1000;
    let sums = on_every_rank(size, backend, |comm, be| {
        let grad = be.alloc(DType::F32, LEN).unwrap();
        be.upload(grad.view(), &gradient(comm.rank(), LEN)).unwrap();
        comm.all_reduce_sum(be, grad.view()).unwrap();
        assert_eq!(
            comm.stats().all_reduce_bytes,
            (LEN * 4) as u64,
            "the bytes reduced are counted"
        );
        be.download::<f32>(grad.view()).unwrap()
    });
    let mut want = gradient(0, LEN);
    for rank in 1..size {
        want.iter_mut()
            .zip(gradient(rank, LEN))
            .for_each(|(w, g)| *w += g);
    }
    for (rank, got) in sums.iter().enumerate() {
        let same_bits = got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits());
        assert!(
            same_bits,
            "rank {rank} of {size}: the sum differs from rank order"
        );
    }
}

#[test]
fn all_reduce_gives_every_rank_the_same_sum_on_the_cpu() {
    all_reduce_on(1, cpu);
    all_reduce_on(2, cpu);
    all_reduce_on(4, cpu);
}

#[test]
fn all_reduce_gives_every_rank_the_same_sum_under_the_emulator() {
    all_reduce_on(2, emu);
    all_reduce_on(4, emu);
}

#[test]
fn broadcast_copies_the_roots_bytes_whatever_their_length() {
    let got = on_every_rank(3, cpu, |comm, be| {
        let mut bytes = vec![comm.rank() as u8; comm.rank() * 5];
        comm.broadcast(be, 2, &mut bytes).unwrap();
        comm.barrier().unwrap();
        (bytes, comm.stats().broadcasts)
    });
    for (bytes, broadcasts) in got {
        assert_eq!(bytes, vec![2u8; 10]);
        assert_eq!(broadcasts, 1);
    }
}

#[test]
fn ranks_in_different_collectives_fail_on_every_rank() {
    let errors = on_every_rank(2, cpu, |comm, be| {
        let grad = be.alloc(DType::F32, 3 + comm.rank()).unwrap();
        comm.all_reduce_sum(be, grad.view())
            .unwrap_err()
            .to_string()
    });
    for e in errors {
        assert!(
            e.contains("out of step") && e.contains("3 floats") && e.contains("4 floats"),
            "{e}"
        );
    }
}

#[test]
fn a_rank_that_leaves_breaks_the_group_instead_of_hanging_it() {
    let results = on_every_rank(3, cpu, |comm, _be| {
        if comm.rank() == 1 {
            return Ok(()); // this thread ends: its comm is dropped
        }
        comm.barrier()
    });
    for (rank, r) in results.iter().enumerate() {
        if rank != 1 {
            let e = r.as_ref().unwrap_err().to_string();
            assert!(e.contains("rank 1 left the group"), "rank {rank}: {e}");
        }
    }
}

#[test]
fn a_table_that_differs_on_one_rank_is_caught_on_every_rank() {
    let agree = on_every_rank(3, cpu, |comm, be| {
        same_on_every_rank(comm, be, "the tie table", checksum(&[0, 0, 2, 2]))
            .map_err(|e| e.to_string())
    });
    assert!(agree.iter().all(|r| r.is_ok()), "{agree:?}");

    let differ = on_every_rank(3, cpu, |comm, be| {
        let table: &[u8] = if comm.rank() == 2 {
            &[0, 0, 2, 3]
        } else {
            &[0, 0, 2, 2]
        };
        same_on_every_rank(comm, be, "the tie table", checksum(table)).map_err(|e| e.to_string())
    });
    for (rank, r) in differ.iter().enumerate() {
        let e = r.as_ref().unwrap_err();
        assert!(
            e.contains("the tie table differs") && e.contains("1 of 3 ranks"),
            "rank {rank}: {e}"
        );
        assert_eq!(e.contains("this is rank 2"), rank == 2, "rank {rank}: {e}");
    }
}

#[test]
fn only_fp32_buffers_are_all_reduced() {
    let be = CpuBackend::new();
    let half = be.alloc(DType::BF16, 8).unwrap();
    let e = Single::new()
        .all_reduce_sum(&be, half.view())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bf16") && e.contains("fp32"), "{e}");
}

#[test]
fn one_replica_changes_nothing_and_counts_what_it_would_send() {
    let be = CpuBackend::new();
    let single = Single::new();
    let grad = be.alloc(DType::F32, 5).unwrap();
    be.upload(grad.view(), &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    single.all_reduce_sum(&be, grad.view()).unwrap();
    assert_eq!(
        be.download::<f32>(grad.view()).unwrap(),
        [1.0, 2.0, 3.0, 4.0, 5.0]
    );
    assert_eq!((single.rank(), single.world_size()), (0, 1));
    assert_eq!(single.stats().all_reduce_bytes, 20);
    let e = single
        .broadcast(&be, 1, &mut vec![])
        .unwrap_err()
        .to_string();
    assert!(e.contains("one replica"), "{e}");
    same_on_every_rank(&single, &be, "the tie table", 7).unwrap();
}

#[test]
fn nccl_says_what_to_install_when_it_is_missing() {
    if Nccl::available() {
        eprintln!("skipped: NCCL is installed here; gpu-check exercises it on a GPU");
        return;
    }
    let e = Nccl::unique_id().unwrap_err().to_string();
    assert!(
        e.contains("NCCL is not installed") && e.contains("nvidia-nccl-cu12"),
        "{e}"
    );
}

mod data_parallel {
    use super::*;
    use dyntie::dist::all_reduce_gradients;
    use dyntie::model::{Arch, Model, ModelConfig};
    use dyntie::tying::table::{TieOptions, TieTable};
    use std::sync::Arc;

    const B: usize = 4;
    const T: usize = 7;

    fn cfg() -> ModelConfig {
        ModelConfig {
            arch: Arch::Gpt2,
            n_layer: 4,
            n_embd: 24,
            n_head: 3,
            n_ctx: 8,
            vocab_size: 29,
            dropout: 0.0,
            bias: true,
        }
    }

    /// Blocks 1 and 3 on block 0's slot, block 2 on its own.
    fn model(be: Arc<dyn Backend>) -> Model {
        let table = TieTable::from_state(&[0, 0, 2, 0], TieOptions::default()).unwrap();
        Model::with_table(be, cfg(), 5, table).unwrap()
    }

    fn batch() -> (Vec<u32>, Vec<u32>) {
        let tokens = (0..B * T).map(|i| ((i * 7 + 3) % 29) as u32).collect();
        let targets = (0..B * T).map(|i| ((i * 5 + 1) % 29) as u32).collect();
        (tokens, targets)
    }

    fn gradients(m: &Model) -> Vec<Vec<f32>> {
        let be = m.backend().clone();
        m.gradients_to_reduce()
            .iter()
            .map(|&g| be.download::<f32>(g).unwrap())
            .collect()
    }

    /// Gradients of `replicas` replicas, each on its own rows of the batch
    /// and scaled by 1 / replicas, summed by the in-process group; and the
    /// bytes rank 0 all-reduced.
    fn data_parallel(replicas: usize, backend: MakeBackend) -> (Vec<Vec<Vec<f32>>>, u64) {
        let threads: Vec<_> = InProcess::group(replicas)
            .unwrap()
            .into_iter()
            .map(|comm| {
                thread::spawn(move || {
                    let be: Arc<dyn Backend> = Arc::from(backend());
                    let mut m = model(be.clone());
                    let (tokens, targets) = batch();
                    let rows = B / replicas;
                    let mine = comm.rank() * rows * T..(comm.rank() + 1) * rows * T;
                    m.zero_grads().unwrap();
                    m.forward_backward(
                        &tokens[mine.clone()],
                        &targets[mine],
                        rows,
                        T,
                        9,
                        1.0 / replicas as f32,
                    )
                    .unwrap();
                    all_reduce_gradients(&comm, be.as_ref(), &m.gradients_to_reduce()).unwrap();
                    (gradients(&m), comm.stats().all_reduce_bytes)
                })
            })
            .collect();
        let out: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let bytes = out[0].1;
        (out.into_iter().map(|(g, _)| g).collect(), bytes)
    }

    fn whole_batch(backend: MakeBackend) -> (Vec<Vec<f32>>, Vec<usize>) {
        let be: Arc<dyn Backend> = Arc::from(backend());
        let mut m = model(be);
        let (tokens, targets) = batch();
        m.zero_grads().unwrap();
        m.forward_backward(&tokens, &targets, B, T, 9, 1.0).unwrap();
        let bytes = m.gradients_to_reduce().iter().map(|g| g.bytes()).collect();
        (gradients(&m), bytes)
    }

    fn replicas_match_one_model_on_the_whole_batch(backend: MakeBackend) {
        let (want, bytes) = whole_batch(backend);
        for replicas in [2, 4] {
            let (got, reduced) = data_parallel(replicas, backend);
            assert_eq!(
                reduced,
                bytes.iter().sum::<usize>() as u64,
                "the all-reduce moves the globals and the live slots' gradients"
            );
            for (rank, grads) in got.iter().enumerate() {
                for (k, (g, w)) in grads.iter().zip(&want).enumerate() {
                    let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    assert!(
                        diff <= 1e-5 * scale,
                        "{replicas} replicas, rank {rank}, gradient buffer {k}: max difference \
                         {diff} against {scale}"
                    );
                }
                assert_eq!(grads, &got[0], "every replica holds the same gradients");
            }
        }
    }

    #[test]
    fn replicas_on_slices_of_the_batch_sum_to_the_whole_batch_gradient_on_the_cpu() {
        replicas_match_one_model_on_the_whole_batch(cpu);
    }

    #[test]
    fn replicas_on_slices_of_the_batch_sum_to_the_whole_batch_gradient_under_the_emulator() {
        replicas_match_one_model_on_the_whole_batch(emu);
    }

    #[test]
    fn a_tie_shrinks_what_is_all_reduced() {
        let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
        let mut m = model(be.clone());
        let before: usize = m.gradients_to_reduce().iter().map(|g| g.bytes()).sum();
        let slot = m.slots().slot_of(2).grads.bytes();
        m.tie(2, 0).unwrap();
        let after: usize = m.gradients_to_reduce().iter().map(|g| g.bytes()).sum();
        assert_eq!(after, before - slot);
        let single = Single::new();
        all_reduce_gradients(&single, be.as_ref(), &m.gradients_to_reduce()).unwrap();
        assert_eq!(
            single.stats().all_reduce_bytes,
            0,
            "one replica sends nothing"
        );
    }
}
