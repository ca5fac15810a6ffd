//! `CpuBackend`: the pure-Rust reference implementation of every op.
