"""PyTorch's causal scaled_dot_product_attention at the shapes of dyntie's
flash attention rows, for the ratio with `dyntie bench kernels` on the same
card.

The shapes are those of `src/commands/bench_kernels.rs` (keep the two lists
in step): GPT-2 124M (batch 8, 12 heads, 1024 tokens, head size 64) and the
paper config (batch 16, 16 heads, 256 tokens, head size 100), bf16, no
dropout. The forward is timed alone; the backward as `out.backward(dout)`
on a kept graph, so neither includes the other. PyTorch picks its own
kernel (its flash kernel where the head size allows, else the
memory-efficient one); the line above the table says which it may use.

    python benches/torch_attention.py [--dyntie bench-kernels.txt]

With --dyntie, the `flash fwd` and `flash bwd` rows of
`dyntie bench kernels --backend cuda` are read (as torch_matmul.py reads
its rows) and each row gets dyntie's
time and the ratio torch / dyntie (above 1.0: dyntie is faster).
"""

import argparse

import torch
import torch.nn.functional as F

from torch_matmul import dyntie_times, seconds

# (model, batch, heads, seq, head size)
SHAPES = [("gpt2-124M", 8, 12, 1024, 64), ("paper", 16, 16, 256, 100)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dyntie", help="output of dyntie bench kernels --backend cuda")
    args = ap.parse_args()
    ours = dyntie_times(args.dyntie) if args.dyntie else {}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; "
          f"sdpa flash {torch.backends.cuda.flash_sdp_enabled()}, "
          f"mem-efficient {torch.backends.cuda.mem_efficient_sdp_enabled()}")
    print(f"{'model':<10} {'op':<10} {'shape':>22} {'torch ms':>9} {'TFLOP/s':>8} {'dyntie ms':>10} {'ratio':>6}")
    for model, b, h, t, d in SHAPES:
        q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        dout = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = fwd()
        bwd = lambda: out.backward(dout, retain_graph=True)
        # Causal: half of the 2 (fwd) or 4 (bwd) products of t x t x d per head.
        for op, f, products in (("flash fwd", fwd, 2), ("flash bwd", bwd, 4)):
            s = seconds(f)
            flops = products * 2 * b * h * t * t * d / 2
            mine = ours.get((model, op, "bf16"))
            tail = f"{mine:>10.3f} {s * 1e3 / mine:>6.2f}" if mine else f"{'-':>10} {'-':>6}"
            shape = f"[{b}, {h}, {t}, {d}]"
            print(f"{model:<10} {op:<10} {shape:>22} {s * 1e3:>9.3f} {flops / s / 1e12:>8.1f} {tail}")
        del q, k, v, dout, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
