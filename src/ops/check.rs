//! The only validation of op calls: shapes, lengths, dtypes, aliasing and
//! scalar arguments, for every backend. A contract in `ops/<family>.rs`
//! declares its operands with [`input`] and [`output`] and hands them to
//! [`operands`]; the CPU backend and the kernel launchers then trust what
//! was checked (the CPU turns views into slices, which is sound only because
//! of these checks).
//!
//! Messages name the op and the operand: `layernorm_fwd: weight has 5
//! elements but the shape needs 6`.
//!
//! **Dtypes.** An op computes in one *compute dtype*, one of the float
//! dtypes its contract lists (`Contract::FLOATS`): fp32, or bf16 in mixed
//! precision. Each operand either follows the compute dtype (the default:
//! activations and the weights' compute copies) or has its own set of
//! allowed dtypes, independent of it ([`Operand::of`], [`Operand::one_of`]):
//! token ids are u32, LayerNorm statistics, weight gradients, losses and
//! AdamW's master weights and moments stay fp32 in every precision. So a
//! bf16 matmul backward reads bf16 `dout`, `inp` and `weight`, accumulates
//! into bf16 `dinp` and into fp32 `dweight` and `dbias`, and this file is
//! the only place that says so.

use crate::mem::{DType, View};
use anyhow::{bail, ensure, Result};

/// The float dtypes of ops that only have an fp32 implementation.
pub const F32_ONLY: &[DType] = &[DType::F32];

/// The float dtypes of ops that also run in mixed precision.
pub const F32_BF16: &[DType] = &[DType::F32, DType::BF16];

/// What dtype an operand may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// The op's compute dtype: the same for every such operand, and one of
    /// the op's float dtypes.
    Compute,
    /// Any one of these, whatever the compute dtype.
    OneOf(&'static [DType]),
}

/// Whether an operand is read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// One operand of an op: the view, how many elements the shape needs from
/// it, its dtype and what it may alias. `view: None` is an absent optional
/// operand (a frozen gradient) and is skipped.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    name: &'static str,
    view: Option<View>,
    len: usize,
    access: Access,
    dtype: Want,
    /// Operands this output may be exactly (same address and length).
    may_alias: &'static [&'static str],
}

/// An operand the op reads; the shape needs its first `len` elements.
pub fn input(name: &'static str, view: impl Into<Option<View>>, len: usize) -> Operand {
    Operand {
        name,
        view: view.into(),
        len,
        access: Access::Read,
        dtype: Want::Compute,
        may_alias: &[],
    }
}

/// An operand the op writes (or accumulates into); the shape needs its first
/// `len` elements.
pub fn output(name: &'static str, view: impl Into<Option<View>>, len: usize) -> Operand {
    Operand {
        access: Access::Write,
        ..input(name, view, len)
    }
}

impl Operand {
    /// A fixed dtype instead of the op's compute dtype: `U32` for token ids,
    /// `F32` for what stays fp32 in every precision.
    pub fn of(self, dtype: DType) -> Self {
        let set: &'static [DType] = match dtype {
            DType::F32 => &[DType::F32],
            DType::BF16 => &[DType::BF16],
            DType::U32 => &[DType::U32],
        };
        self.one_of(set)
    }

    /// Any of `dtypes`, independent of the op's compute dtype (a cast's
    /// source).
    pub fn one_of(self, dtypes: &'static [DType]) -> Self {
        Operand {
            dtype: Want::OneOf(dtypes),
            ..self
        }
    }

    /// This output may be exactly one of `names` (same address and length):
    /// an in-place update such as the residual `x = x + branch`.
    pub fn may_alias(self, names: &'static [&'static str]) -> Self {
        Operand {
            may_alias: names,
            ..self
        }
    }

    /// The bytes the shape uses: `[start, end)`.
    fn span(&self, view: View) -> (u64, u64) {
        (view.addr, view.addr + (self.len * view.dtype.size()) as u64)
    }
}

/// Validates the operands of one call of `op`, whose compute dtype may be
/// any one of `floats`: dtypes, lengths, addresses, then overlaps.
pub fn operands(op: &str, floats: &[DType], operands: &[Operand]) -> Result<()> {
    let mut float: Option<(&str, DType)> = None;
    for o in operands {
        let Some(v) = o.view else { continue };
        match o.dtype {
            Want::OneOf(set) => ensure!(
                set.contains(&v.dtype),
                "{op}: {} is {} but must be {}",
                o.name,
                v.dtype,
                names_or(set)
            ),
            Want::Compute => match float {
                Some((first, dtype)) => ensure!(
                    v.dtype == dtype,
                    "{op}: {} is {} but {first} is {dtype}; they must match",
                    o.name,
                    v.dtype
                ),
                None => {
                    ensure!(
                        floats.contains(&v.dtype),
                        "{op}: {} is {}, but {op} is only implemented for {}",
                        o.name,
                        v.dtype,
                        names(floats)
                    );
                    float = Some((o.name, v.dtype));
                }
            },
        }
    }
    for o in operands {
        let Some(v) = o.view else { continue };
        ensure!(
            v.len >= o.len,
            "{op}: {} has {} elements but the shape needs {}",
            o.name,
            v.len,
            o.len
        );
        ensure!(
            o.len == 0 || (v.addr != 0 && v.addr.is_multiple_of(v.dtype.size() as u64)),
            "{op}: {} address {:#x} is null or not aligned to its {} elements",
            o.name,
            v.addr,
            v.dtype
        );
    }
    for (i, w) in operands.iter().enumerate() {
        let Some(wv) = w.view else { continue };
        if w.access != Access::Write || w.len == 0 {
            continue;
        }
        let (w0, w1) = w.span(wv);
        for (j, o) in operands.iter().enumerate() {
            let Some(ov) = o.view else { continue };
            // Each pair of outputs once; every output against every input.
            if j == i || o.len == 0 || (o.access == Access::Write && j < i) {
                continue;
            }
            let (o0, o1) = o.span(ov);
            if w0 >= o1 || o0 >= w1 {
                continue;
            }
            let exact = w0 == o0 && w1 == o1;
            let allowed = exact && (w.may_alias.contains(&o.name) || o.may_alias.contains(&w.name));
            ensure!(
                allowed,
                "{op}: output {} overlaps {} {}; outputs must not overlap other operands{}",
                w.name,
                if o.access == Access::Write {
                    "output"
                } else {
                    "input"
                },
                o.name,
                if w.may_alias.is_empty() {
                    String::new()
                } else {
                    format!(" (it may be exactly {})", w.may_alias.join(" or "))
                }
            );
        }
    }
    Ok(())
}

/// The common length of views that must all have the same number of
/// elements (elementwise ops): the first one's.
pub fn same_len(op: &str, views: &[(&str, View)]) -> Result<usize> {
    let (first, v0) = views[0];
    for (name, v) in &views[1..] {
        ensure!(
            v.len == v0.len,
            "{op}: {first} has {} elements but {name} has {}; they must match",
            v0.len,
            v.len
        );
    }
    Ok(v0.len)
}

/// A size that must not be zero (channels, vocabulary).
pub fn nonzero(op: &str, what: &str, value: usize) -> Result<()> {
    ensure!(value > 0, "{op}: zero {what}");
    Ok(())
}

/// A probability in `[0, 1]`.
pub fn probability(op: &str, what: &str, p: f32) -> Result<()> {
    ensure!(
        (0.0..=1.0).contains(&p),
        "{op}: {what} {p} is not in [0, 1]"
    );
    Ok(())
}

/// A finite scalar that is not negative (an epsilon).
pub fn nonnegative(op: &str, what: &str, x: f32) -> Result<()> {
    ensure!(
        x >= 0.0 && x.is_finite(),
        "{op}: {what} {x} must be a finite number >= 0"
    );
    Ok(())
}

/// A counter that starts at 1 (the AdamW step).
pub fn one_based(op: &str, what: &str, value: u32) -> Result<()> {
    ensure!(value >= 1, "{op}: {what} is 1-based, got 0");
    Ok(())
}

/// `channels` must split into `heads` equal heads.
pub fn heads(op: &str, channels: usize, heads: usize) -> Result<()> {
    ensure!(
        heads > 0 && channels.is_multiple_of(heads),
        "{op}: {channels} channels do not split into {heads} heads"
    );
    Ok(())
}

/// A host copy: `view` must hold exactly `len` elements of `dtype`.
pub fn host_copy(what: &str, view: View, dtype: DType, len: usize) -> Result<()> {
    ensure!(
        view.dtype == dtype,
        "{what}: the view holds {} but the host data is {dtype}",
        view.dtype
    );
    ensure!(
        view.len == len,
        "{what}: {len} host elements for a view of {}",
        view.len
    );
    Ok(())
}

/// The byte form of a host copy, as backends receive it: exactly the view's
/// bytes, at a non-null address.
pub fn host_bytes(what: &str, view: View, bytes: usize) -> Result<()> {
    ensure!(
        bytes == view.bytes(),
        "{what}: {bytes} host bytes for a view of {} bytes",
        view.bytes()
    );
    ensure!(
        bytes == 0 || view.addr != 0,
        "{what}: the view's address is null"
    );
    Ok(())
}

/// Token ids must index the embedding table. Only a backend that can read
/// them cheaply (the CPU) checks; the data layer validates every batch.
pub fn token_ids(op: &str, tokens: &[u32], vocab: usize) -> Result<()> {
    if let Some(pos) = tokens.iter().position(|&t| t as usize >= vocab) {
        bail!(
            "{op}: token id {} at position {pos} is not below the vocabulary size {vocab}",
            tokens[pos]
        );
    }
    Ok(())
}

/// Targets must be below the vocabulary or be the ignore index.
pub fn targets(op: &str, targets: &[u32], vocab: usize, ignore_index: u32) -> Result<()> {
    if let Some(pos) = targets
        .iter()
        .position(|&y| y != ignore_index && y as usize >= vocab)
    {
        bail!(
            "{op}: target {} in row {pos} is neither below the vocabulary size {vocab} nor the ignore index {ignore_index}",
            targets[pos]
        );
    }
    Ok(())
}

fn names(dtypes: &[DType]) -> String {
    dtypes
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// "f32", "f32 or bf16".
fn names_or(dtypes: &[DType]) -> String {
    match dtypes.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", names(rest)),
        _ => names(dtypes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: DType = DType::F32;

    fn v(addr: u64, len: usize) -> View {
        View::new(addr, len, F)
    }

    #[test]
    fn lengths_dtypes_and_addresses_are_checked() {
        let e = operands("op", F32_ONLY, &[input("x", v(256, 3), 4)]).unwrap_err();
        assert_eq!(e.to_string(), "op: x has 3 elements but the shape needs 4");
        let e = operands(
            "op",
            F32_ONLY,
            &[input("x", View::new(256, 4, DType::BF16), 4)],
        )
        .unwrap_err();
        assert!(e.to_string().contains("only implemented for f32"), "{e}");
        let e = operands(
            "op",
            &[F, DType::BF16],
            &[
                input("x", v(256, 4), 4),
                input("w", View::new(512, 4, DType::BF16), 4),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("w is bf16 but x is f32"), "{e}");
        let e = operands("op", F32_ONLY, &[input("t", v(256, 4), 4).of(DType::U32)]).unwrap_err();
        assert!(e.to_string().contains("t is f32 but must be u32"), "{e}");
        // Per-operand sets: a bf16 op with an fp32 gradient, and a cast's
        // source of either float type.
        let b = |addr, len| View::new(addr, len, DType::BF16);
        operands(
            "op",
            F32_BF16,
            &[
                input("x", b(256, 4), 4),
                output("dw", v(512, 4), 4).of(F),
                input("src", v(1024, 4), 4).one_of(F32_BF16),
            ],
        )
        .unwrap();
        let e = operands(
            "op",
            F32_BF16,
            &[input("x", b(256, 4), 4), output("dw", b(512, 4), 4).of(F)],
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "op: dw is bf16 but must be f32");
        let e = operands("op", F32_BF16, &[input("t", v(256, 4), 4).one_of(F32_BF16)]);
        e.unwrap();
        let e = operands(
            "op",
            F32_ONLY,
            &[input("t", b(256, 4), 4).one_of(&[F, DType::U32])],
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "op: t is bf16 but must be f32 or u32");
        let e = operands("op", F32_ONLY, &[input("x", v(258, 4), 4)]).unwrap_err();
        assert!(e.to_string().contains("not aligned"), "{e}");
        // Absent and empty operands are fine anywhere.
        operands(
            "op",
            F32_ONLY,
            &[output("g", None, 9), input("e", v(0, 0), 0)],
        )
        .unwrap();
    }

    #[test]
    fn outputs_may_only_alias_exactly_what_the_contract_allows() {
        let (a, b) = (v(1024, 8), v(2048, 8));
        let add = |out: View| {
            operands(
                "add",
                F32_ONLY,
                &[
                    output("out", out, 8).may_alias(&["a", "b"]),
                    input("a", a, 8),
                    input("b", b, 8),
                ],
            )
        };
        add(a).unwrap();
        add(b).unwrap();
        add(v(4096, 8)).unwrap();
        let e = add(v(1028, 8)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("add: output out overlaps input a"),
            "{e}"
        );
        // Without permission even an exact alias is refused, and two
        // outputs may not overlap each other.
        let e = operands("op", F32_ONLY, &[output("o", a, 8), input("x", a, 8)]).unwrap_err();
        assert!(e.to_string().contains("output o overlaps input x"), "{e}");
        let e = operands(
            "op",
            F32_ONLY,
            &[output("o", a, 8), output("p", v(1040, 8), 8)],
        )
        .unwrap_err();
        assert!(e.to_string().contains("output o overlaps output p"), "{e}");
        // Only the elements the shape uses count.
        operands(
            "op",
            F32_ONLY,
            &[output("o", v(1024, 100), 8), input("x", v(1056, 8), 8)],
        )
        .unwrap();
    }
}
