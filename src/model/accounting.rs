//! Counted training memory for a model shape and a tie state (TYING.md,
//! "Parameter and memory accounting").
//!
//! Counted from the table, not measured: parameters of all live slots and the
//! globals (fp32, plus an optional 16-bit copy), gradients and AdamW m, v of
//! the trainable ones (fp32), and activations as planned by the model.

use serde::{Deserialize, Serialize};

use super::ModelConfig;
use crate::tying::table::TieTable;

/// Counted parameters and training memory for one tie state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReport {
    pub n_layer: usize,
    /// Slots holding weights (distinct weight sets among the blocks).
    pub live_slots: usize,
    /// Live slots that receive gradients.
    pub trainable_slots: usize,
    pub block_params: u64,
    pub global_params: u64,
    /// Globals + live slots.
    pub params: u64,
    /// Globals + trainable slots.
    pub trainable_params: u64,
    /// fp32 weights of everything stored, plus the 16-bit copy if any
    /// (bytes include the vocabulary's padding rows; parameter counts do not).
    pub param_bytes: u64,
    /// fp32 gradients of the trainable parameters.
    pub grad_bytes: u64,
    /// fp32 AdamW m and v of the trainable parameters.
    pub adam_bytes: u64,
    /// As planned by the model (independent of tying).
    pub activation_bytes: u64,
    pub total_bytes: u64,
    /// What data-parallel replicas sum per step: every trainable gradient
    /// (the globals and the trainable slots, so it drops as blocks tie)
    /// and the step's loss.
    pub all_reduce_bytes: u64,
}

impl MemoryReport {
    /// Count from slot numbers. `low_precision_copy` adds a 2-byte copy of
    /// every stored weight (bf16/fp16 training with fp32 masters).
    pub fn from_counts(
        shape: &ModelConfig,
        live_slots: usize,
        trainable_slots: usize,
        low_precision_copy: bool,
        activation_bytes: u64,
    ) -> Self {
        let (block, global) = (shape.block_params() as u64, shape.global_params() as u64);
        let params = global + live_slots as u64 * block;
        let trainable_params = global + trainable_slots as u64 * block;
        // Bytes count what is allocated: the globals with the vocabulary's
        // zero padding rows (see `layout::VOCAB_ALIGN`).
        let padding = (shape.global_elements() - shape.global_params()) as u64;
        let weight_bytes = if low_precision_copy { 4 + 2 } else { 4 };
        let param_bytes = (params + padding) * weight_bytes;
        let grad_bytes = (trainable_params + padding) * 4;
        let adam_bytes = (trainable_params + padding) * 8;
        MemoryReport {
            n_layer: shape.n_layer,
            live_slots,
            trainable_slots,
            block_params: block,
            global_params: global,
            params,
            trainable_params,
            param_bytes,
            grad_bytes,
            adam_bytes,
            activation_bytes,
            total_bytes: param_bytes + grad_bytes + adam_bytes + activation_bytes,
            all_reduce_bytes: grad_bytes + 4,
        }
    }

    /// Count for the table's current state.
    pub fn from_table(
        shape: &ModelConfig,
        table: &TieTable,
        low_precision_copy: bool,
        activation_bytes: u64,
    ) -> Self {
        Self::from_counts(
            shape,
            table.live_slots().len(),
            table.trainable_slots().len(),
            low_precision_copy,
            activation_bytes,
        )
    }
}

/// A plain-text table, one row per (label, report), with each row's total
/// relative to the first row's.
pub fn format_memory_table(rows: &[(&str, &MemoryReport)]) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let mib = |b: u64| format!("{:.1}", b as f64 / MIB);
    let m = |p: u64| format!("{:.2}", p as f64 / 1e6);
    let header = [
        "policy",
        "live",
        "trained",
        "params M",
        "trainable M",
        "weights MiB",
        "grads MiB",
        "AdamW MiB",
        "activ. MiB",
        "total MiB",
        "vs first",
        "all-reduce MiB/step",
    ];
    let base = rows.first().map(|r| r.1.total_bytes.max(1)).unwrap_or(1);
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for (label, r) in rows {
        cells.push(vec![
            label.to_string(),
            format!("{}/{}", r.live_slots, r.n_layer),
            format!("{}/{}", r.trainable_slots, r.n_layer),
            m(r.params),
            m(r.trainable_params),
            mib(r.param_bytes),
            mib(r.grad_bytes),
            mib(r.adam_bytes),
            mib(r.activation_bytes),
            mib(r.total_bytes),
            format!("{:.2}x", r.total_bytes as f64 / base as f64),
            mib(r.all_reduce_bytes),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| cells.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c == 0 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;
    use crate::tying::table::{InitTies, TieOptions};

    /// The paper's conventional GPT-2: 48 blocks of width 1600, 16 heads,
    /// context 256, GPT-2 vocabulary.
    fn paper() -> ModelConfig {
        ModelConfig {
            arch: Arch::Gpt2,
            n_layer: 48,
            n_embd: 1600,
            n_head: 16,
            n_ctx: 256,
            vocab_size: 50257,
            dropout: 0.2,
            bias: true,
        }
    }

    #[test]
    fn the_papers_conventional_model_has_1556m_parameters() {
        let shape = paper();
        let r = MemoryReport::from_counts(&shape, 48, 48, false, 0);
        // Paper: ~1,556 M total, 30.74 M per block, 80.8 M embeddings.
        assert_eq!(shape.block_params(), 30_740_800);
        assert_eq!(shape.global_params(), 80_824_000);
        assert_eq!(r.params, 1_556_382_400);
        assert_eq!(r.trainable_params, r.params);
        // The paper's 264 M trainable parameters are about 6 trained blocks.
        let six = MemoryReport::from_counts(&shape, 48, 6, false, 0);
        assert!((six.trainable_params as f64 / 1e6 - 265.3).abs() < 0.1);
    }

    /// The paper's causal BERT: transformers' default BertConfig with the
    /// GPT-2 vocabulary, counted by hand below.
    #[test]
    fn the_papers_bert_has_124_7m_parameters() {
        let shape = crate::config::RunConfig::preset("bert")
            .unwrap()
            .model
            .with_default_vocab(50_257);
        let (v, c, t, f) = (50_257u64, 768u64, 512u64, 3072u64);
        // qkv, attention output, its LayerNorm, intermediate, output, its LayerNorm.
        let block = (c * 3 * c + 3 * c) + (c * c + c) + 2 * c + (c * f + f) + (f * c + c) + 2 * c;
        assert_eq!(block, 7_087_872);
        // Word, position and token-type embeddings and their LayerNorm; the
        // head transform (dense, LayerNorm) and the decoder's bias.
        let global = v * c + t * c + 2 * c + 2 * c + (c * c + c) + 2 * c + v;
        assert_eq!(global, 39_636_049);
        assert_eq!(shape.block_params() as u64, block);
        assert_eq!(shape.global_params() as u64, global);
        let r = MemoryReport::from_counts(&shape, 12, 12, false, 0);
        assert_eq!(r.params, 124_690_513);
        // Tied down to one slot, as the paper's tied BERT.
        let one = MemoryReport::from_counts(&shape, 1, 1, false, 0);
        assert_eq!(one.params, global + block);
    }

    #[test]
    fn bytes_on_a_hand_counted_shape() {
        let shape = ModelConfig {
            arch: Arch::Gpt2,
            n_layer: 4,
            n_embd: 8,
            n_head: 2,
            n_ctx: 16,
            vocab_size: 100,
            dropout: 0.0,
            bias: false,
        };
        // 12*64 + 2*8 = 784 per block; (100 + 16)*8 + 8 = 936 globals.
        assert_eq!(shape.block_params(), 784);
        assert_eq!(shape.global_params(), 936);
        let r = MemoryReport::from_counts(&shape, 3, 2, true, 1000);
        assert_eq!(r.params, 936 + 3 * 784);
        assert_eq!(r.trainable_params, 936 + 2 * 784);
        // The bytes hold wte's padding too: 100 rows pad to 128, 28 * 8.
        assert_eq!(shape.padded_vocab(), 128);
        assert_eq!(shape.global_elements(), 936 + 28 * 8);
        assert_eq!(r.param_bytes, (936 + 224 + 3 * 784) * 6);
        assert_eq!(r.grad_bytes, (936 + 224 + 2 * 784) * 4);
        assert_eq!(r.adam_bytes, (936 + 224 + 2 * 784) * 8);
        assert_eq!(
            r.total_bytes,
            r.param_bytes + r.grad_bytes + r.adam_bytes + 1000
        );
    }

    #[test]
    fn ties_shrink_memory_and_frozen_aliases_are_not_trained() {
        let shape = paper();
        let none = TieTable::new(48, TieOptions::default()).unwrap();
        let mut s: Vec<usize> = (0..48).collect();
        s.iter_mut().skip(1).for_each(|x| *x = 0);
        let all = TieTable::from_state(&s, TieOptions::default()).unwrap();
        let a = MemoryReport::from_table(&shape, &none, false, 0);
        let b = MemoryReport::from_table(&shape, &all, false, 0);
        assert_eq!((b.live_slots, b.trainable_slots), (1, 1));
        assert_eq!(
            a.total_bytes - b.total_bytes,
            47 * shape.block_params() as u64 * 16
        );
        // Paper-compat start: 48 stored blocks, one trained.
        let paper = TieTable::new(
            48,
            TieOptions {
                init: InitTies::Zero,
                ..TieOptions::paper()
            },
        )
        .unwrap();
        let p = MemoryReport::from_table(&shape, &paper, false, 0);
        assert_eq!((p.live_slots, p.trainable_slots), (48, 1));
        assert_eq!(p.param_bytes, a.param_bytes);
        assert_eq!(p.grad_bytes, b.grad_bytes);
    }

    #[test]
    fn text_table_lists_every_row() {
        let shape = paper();
        let a = MemoryReport::from_counts(&shape, 48, 48, false, 1 << 30);
        let b = MemoryReport::from_counts(&shape, 12, 6, false, 1 << 30);
        let t = format_memory_table(&[("none", &a), ("dynamic", &b)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("policy"));
        assert!(
            lines[1].starts_with("none")
                && lines[1].contains("1556.38")
                && lines[1].contains("1.00x")
        );
        assert!(lines[2].contains("6/48") && lines[2].contains("12/48"));
        // fp32 weights of the conventional model: 1,556,382,400 * 4 B, plus
        // wte's 47 padding rows (50257 -> 50304) of 1600.
        let weights = (1_556_382_400.0 + 47.0 * 1600.0) * 4.0 / 1048576.0;
        assert!(lines[1].contains(&format!("{weights:.1}")));
        // The last column: what replicas sum per step, every trainable
        // gradient (all 48 blocks here) and the loss.
        let reduced = ((1_556_382_400u64 + 47 * 1600) * 4 + 4) as f64 / 1048576.0;
        assert!(lines[1].ends_with(&format!("{reduced:.1}")), "{}", lines[1]);
        assert_eq!(a.all_reduce_bytes, (1_556_382_400 + 47 * 1600) * 4 + 4);
        assert!(
            b.all_reduce_bytes < a.all_reduce_bytes,
            "6 trainable blocks of 48"
        );
    }
}
