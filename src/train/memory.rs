//! The memory a run needs, checked against what the backend has before
//! anything is allocated: the counted training memory of
//! [`MemoryReport`] (the numbers `dyntie bench memory` prints) plus a
//! synthetic corpus held in memory. A shape too large to count at all
//! (more than [`COUNTABLE_BYTES`]) is refused from a bound computed in
//! 128-bit arithmetic, so no size computation later can overflow.

use super::setup::{initial_table, synthetic_config};
use crate::config::RunConfig;
use crate::model::accounting::MemoryReport;
use crate::model::{activation_bytes, AttentionPath, ModelConfig};
use crate::precision::Precision;
use crate::tying::policy::TyingPolicy;
use anyhow::{bail, Result};

/// Beyond this (1 PiB) a run is not counted exactly: no machine has it,
/// and every size the model computes stays far below `u64::MAX`.
pub const COUNTABLE_BYTES: u128 = 1 << 50;

/// Memory a backend can give, and where that number comes from.
#[derive(Clone, Debug)]
pub struct Available {
    pub bytes: u64,
    /// E.g. "the CPU backend has ... (MemAvailable in /proc/meminfo)".
    pub what: String,
}

/// Host memory available to a new process (MemAvailable), when the
/// system says.
pub fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// An upper bound of every size the model, its activation plan and the
/// data compute for this run, in bytes (saturating 128-bit arithmetic).
fn bound_bytes(m: &ModelConfig, batch: usize, data_bytes: u128) -> u128 {
    let [l, c, h, t, v, b] = [
        m.n_layer,
        m.n_embd,
        m.n_head,
        m.n_ctx,
        m.padded_vocab(),
        batch,
    ]
    .map(|x| x as u128);
    let (add, mul) = (u128::saturating_add, u128::saturating_mul);
    let params = add(
        mul(l, add(mul(12, mul(c, c)), mul(13, c))),
        mul(add(add(v, t), 2), c),
    );
    let n = mul(b, t);
    let att = mul(mul(b, h), mul(t, t));
    let per_block = add(add(mul(17, mul(n, c)), att), add(mul(8, n), 1024));
    let activations = add(mul(add(l, 3), per_block), add(mul(n, v), mul(2, n)));
    add(add(mul(20, params), mul(4, activations)), data_bytes)
}

/// The precision `cfg`'s memory is counted in: the one it runs in, fp32
/// (the larger) while that is not yet known. It chooses the compute dtype
/// of the activations, the attention path and whether the weights have a
/// 16-bit compute copy.
pub fn counted_precision(cfg: &RunConfig) -> Precision {
    cfg.precision.unwrap_or(Precision::Fp32)
}

/// The activation bytes `cfg` counts (the arenas of one training step) in
/// its [`counted_precision`].
pub fn counted_activation_bytes(cfg: &RunConfig, mc: &ModelConfig) -> u64 {
    let precision = counted_precision(cfg);
    activation_bytes(
        mc,
        cfg.train.batch,
        mc.n_ctx,
        cfg.train.recompute,
        AttentionPath::choose(precision, mc),
        precision.compute_dtype(),
    ) as u64
}

/// What a run needs: the counted training memory of its worst table (all
/// blocks independent for the dynamic policy, which may untie everything)
/// and the bytes of a synthetic corpus.
#[derive(Clone, Debug)]
pub struct Need {
    pub report: MemoryReport,
    pub data_bytes: u64,
}

impl Need {
    pub fn total(&self) -> u64 {
        self.report.total_bytes + self.data_bytes
    }
}

/// The memory `cfg` needs with a vocabulary of `vocab`; an error when it is
/// beyond counting.
pub fn need(cfg: &RunConfig, vocab: usize) -> Result<Need> {
    let mc = cfg.model.with_default_vocab(vocab);
    let batch = cfg.train.batch;
    let data_bytes: u128 = match cfg.data.prepared_dir() {
        Some(_) => 0, // memory-mapped, not held
        None => {
            let s = synthetic_config(cfg);
            4 * (s.train_tokens as u128 + s.valid_tokens as u128 + s.test_tokens as u128)
        }
    };
    let bound = bound_bytes(&mc, batch, data_bytes);
    if bound > COUNTABLE_BYTES {
        bail!(
            "this run would need about {} of memory ({} blocks x width {}, {} heads, context {}, \
             batch {}, vocabulary {}): far more than any machine has; choose a smaller --ctx, \
             --batch, --d-model or --layers",
            human(bound),
            mc.n_layer,
            mc.n_embd,
            mc.n_head,
            mc.n_ctx,
            batch,
            mc.vocab_size
        );
    }
    let acts = counted_activation_bytes(cfg, &mc);
    let copy = counted_precision(cfg).has_compute_copy();
    let report = if cfg.tying.policy.is_dynamic() {
        MemoryReport::from_counts(&mc, mc.n_layer, mc.n_layer, copy, acts)
    } else {
        let table = initial_table(cfg, &cfg.tying.policy, mc.n_layer)?;
        MemoryReport::from_table(&mc, &table, copy, acts)
    };
    Ok(Need {
        report,
        data_bytes: data_bytes as u64,
    })
}

/// Refuses a run that needs more memory than `available`, naming both and
/// what would make it fit.
pub fn check(cfg: &RunConfig, vocab: usize, available: &Available) -> Result<()> {
    let wanted = need(cfg, vocab)?;
    let total = wanted.total();
    if total <= available.bytes {
        return Ok(());
    }
    let r = &wanted.report;
    let mut ways: Vec<String> = Vec::new();
    if !cfg.train.recompute {
        let mut c = cfg.clone();
        c.train.recompute = true;
        let with = need(&c, vocab)?.total();
        ways.push(format!("--recompute ({})", mib(with)));
    }
    let mut smaller = cfg.clone();
    while smaller.train.batch > 1 {
        smaller.train.batch /= 2;
        let with = need(&smaller, vocab)?.total();
        if with <= available.bytes {
            ways.push(format!("--batch {} ({})", smaller.train.batch, mib(with)));
            break;
        }
    }
    if cfg.tying.policy != TyingPolicy::All {
        let mut c = cfg.clone();
        c.tying.policy = TyingPolicy::All;
        let with = need(&c, vocab)?.total();
        // Worth naming only where the weights are a good part of the need.
        if with < total - total / 10 {
            ways.push(format!(
                "tying, e.g. --tying all ({}; the dynamic policy is counted untied, its worst case)",
                mib(with)
            ));
        }
    }
    bail!(
        "this run needs {} of memory (weights {}, gradients {}, AdamW moments {}, activations {}{}), \
         but {}: {}",
        mib(total),
        mib(r.param_bytes),
        mib(r.grad_bytes),
        mib(r.adam_bytes),
        mib(r.activation_bytes),
        if wanted.data_bytes > 0 {
            format!(", synthetic corpus {}", mib(wanted.data_bytes))
        } else {
            String::new()
        },
        available.what,
        if ways.is_empty() {
            "choose a smaller model".to_string()
        } else {
            format!("try {}", ways.join(", or "))
        }
    )
}

/// Bytes in MiB, as `bench memory` prints them, or in a larger unit when
/// there are very many.
pub fn mib(bytes: u64) -> String {
    if bytes < 1 << 40 {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        human(bytes as u128)
    }
}

/// A very large byte count, in the largest binary unit below it.
fn human(bytes: u128) -> String {
    let units = [
        "bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB",
    ];
    let mut x = bytes as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    format!("{x:.0} {}", units[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_covers_the_counted_memory() {
        for preset in ["tiny", "small", "gpt2", "paper"] {
            let cfg = RunConfig::preset(preset).unwrap();
            let n = need(&cfg, 50257).unwrap();
            let mc = cfg.model.with_default_vocab(50257);
            let bound = bound_bytes(&mc, cfg.train.batch, n.data_bytes as u128);
            assert!(
                bound >= n.total() as u128,
                "{preset}: {bound} < {}",
                n.total()
            );
            assert!(
                bound < 3 * n.total() as u128,
                "{preset}: {bound} is too loose"
            );
        }
    }

    #[test]
    fn sizes_beyond_counting_are_an_error_not_an_overflow() {
        let mut cfg = RunConfig::preset("small").unwrap();
        cfg.model.n_ctx = usize::MAX;
        cfg.train.batch = usize::MAX;
        let e = need(&cfg, 512).unwrap_err().to_string();
        assert!(e.contains("far more than any machine has"), "{e}");
    }
}
