"""cuBLAS (torch.matmul) at the matrix products of a training step, for the
ratio with `dyntie bench kernels` on the same card.

The products are those of `src/commands/bench_kernels.rs` (keep the two
lists in step): per linear layer of GPT-2 124M (batch 8 x 1024 tokens) and
of the paper config (16 x 256, width 1600), the forward `x @ W^T`, the
input gradient `dy @ W` and the weight gradient `dy^T @ x`, in fp32 and
bf16. Attention is left out (dyntie times it as whole ops; flash attention
has its own comparison). Also an 8192^3 bf16 product: the card's measured
ceiling.

    python benches/torch_matmul.py [--dyntie bench-kernels.txt]

With --dyntie, the output of `dyntie bench kernels --backend cuda` is read
and each row gets dyntie's time and the ratio cuBLAS / dyntie (1.0: as fast
as cuBLAS).
"""

import argparse
import re
import time

import torch

VOCAB = 50257
CONFIGS = [("gpt2-124M", 8 * 1024, 768), ("paper", 16 * 256, 1600)]


def products():
    for model, n, c in CONFIGS:
        for name, ic, oc in [
            ("attn.qkv", c, 3 * c),
            ("attn.proj", c, c),
            ("mlp.fc", c, 4 * c),
            ("mlp.proj", 4 * c, c),
            ("head", c, VOCAB),
        ]:
            for what in ("fwd", "dinp", "dweight"):
                yield model, f"{name} {what}", n, ic, oc, what


def seconds(f, reps=10):
    f()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def dyntie_times(path):
    """(model, product, dtype) -> ms from dyntie's table."""
    row = re.compile(r"^(\S+)\s+(\S+ \S+)\s+(f32|bf16)\s+\[[^\]]*\]\s+\S+\s+\S+\s+([0-9.]+)\s")
    times = {}
    for line in open(path):
        m = row.match(line)
        if m:
            times[(m[1], m[2], m[3])] = float(m[4])
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dyntie", help="output of dyntie bench kernels --backend cuda")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    ours = dyntie_times(args.dyntie) if args.dyntie else {}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    s = seconds(lambda: a @ a)
    print(f"ceiling: bf16 8192^3 {2 * 8192**3 / s / 1e12:.0f} TFLOP/s")
    del a
    print(f"{'model':<10} {'product':<18} {'dtype':<5} {'cuBLAS ms':>10} {'TFLOP/s':>8} {'dyntie ms':>10} {'ratio':>6}")
    for model, name, n, ic, oc, what in products():
        for dtype, label in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            x = torch.randn(n, ic, device="cuda", dtype=dtype)
            w = torch.randn(oc, ic, device="cuda", dtype=dtype)
            dy = torch.randn(n, oc, device="cuda", dtype=dtype)
            f = {
                "fwd": lambda: torch.matmul(x, w.t()),
                "dinp": lambda: torch.matmul(dy, w),
                "dweight": lambda: torch.matmul(dy.t(), x),
            }[what]
            s = seconds(f)
            mine = ours.get((model, name, label))
            tail = f"{mine:>10.3f} {s * 1e3 / mine:>6.2f}" if mine else f"{'-':>10} {'-':>6}"
            print(f"{model:<10} {name:<18} {label:<5} {s * 1e3:>10.3f} {2 * n * ic * oc / s / 1e12:>8.1f} {tail}")
            del x, w, dy
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
