"""PyTorch eager baseline for dyntie's throughput benchmarks.

Times full training steps (zero grads, forward, backward, gradient clipping,
AdamW, synchronize) of the same GPT-2 that dyntie trains: pre-LN, fused qkv,
causal softmax attention, tanh-GELU, output head tied to wte, dropout on the
embeddings and on both residual branches (not on the attention
probabilities, as in dyntie), fp32. Init as dyntie's: linear weights, wte and
wpe N(0, 0.02), the residual output projections N(0, 0.02/sqrt(2L)), biases 0,
LayerNorm weights 1. AdamW decays only the linear weight matrices (not biases,
LayerNorms or the embeddings, so not the tied wte/lm_head).

A static tie pattern (--tying none|all|every:K|pattern:s0,s1,...; s[i] is the
block whose weights block i uses, as in dyntie) is made by aliasing modules:
block i *is* block s[i]'s nn.Module, so parameters, gradients and optimizer
state are shared (dyntie's default --tie-grad shared).

--recompute wraps every block in torch.utils.checkpoint (non-reentrant, RNG
state preserved), PyTorch's form of dyntie's --recompute: only each block's
input is kept and the block runs again in backward.

    pip install torch
    python benches/pytorch_baseline.py --threads 2 --json
    python benches/pytorch_baseline.py --device cuda --layers 12 --d-model 768 --heads 12 --ctx 1024 --tying all
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    def __init__(self, c, heads, dropout):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.ln2 = nn.LayerNorm(c)
        self.fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        # Explicit softmax attention, as dyntie computes it (no fused kernel).
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        att = att.masked_fill(~mask[:t, :t], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.mlp_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh")))


def tie_state(flag, layers):
    """The state vector of a static pattern, with dyntie's meaning."""
    if flag == "none":
        return list(range(layers))
    if flag == "all":
        return [0] * layers
    if flag.startswith("every:"):
        k = int(flag.split(":", 1)[1])
        if k < 1:
            raise SystemExit("--tying every:K: K must be at least 1")
        return [k * (i // k) for i in range(layers)]
    if flag.startswith("pattern:"):
        s = [int(x) for x in flag.split(":", 1)[1].split(",")]
        if len(s) != layers or any(not 0 <= s[i] <= i for i in range(layers)):
            raise SystemExit(f"--tying {flag}: need {layers} entries with 0 <= s[i] <= i")
        return s
    raise SystemExit(f"--tying {flag} is unknown: use none, all, every:K or pattern:s0,s1,...")


class GPT2(nn.Module):
    def __init__(self, layers, c, heads, ctx, vocab, dropout, state, recompute=False):
        super().__init__()
        self.recompute = recompute
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(ctx, c)
        self.drop = nn.Dropout(dropout)
        # Unique blocks only; block i runs the module of its source (aliasing).
        self.unique = nn.ModuleDict()
        for i, s in enumerate(state):
            if s == i:
                self.unique[str(i)] = Block(c, heads, dropout)
        self.order = [self.resolve(state, i) for i in range(layers)]
        self.ln_f = nn.LayerNorm(c)
        self.register_buffer("mask", torch.tril(torch.ones(ctx, ctx, dtype=torch.bool)))
        for n, p in self.named_parameters():
            if p.dim() == 2:
                proj = n.endswith(".proj.weight") or n.endswith("mlp_proj.weight")
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers) if proj else 0.02)
            elif n.endswith("bias"):
                nn.init.zeros_(p)

    @staticmethod
    def resolve(state, i):
        while state[i] != i:
            i = state[i]
        return str(i)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(t, device=idx.device)))
        for key in self.order:
            if self.recompute and self.training:
                x = checkpoint(self.unique[key], x, self.mask, use_reentrant=False)
            else:
                x = self.unique[key](x, self.mask)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def peak_rss_bytes():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d-model", "--width", dest="width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--tying", default="none", help="none, all, every:K or pattern:s0,s1,...")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0, help="0 disables clipping")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--recompute", action="store_true", help="activation checkpointing per block")
    ap.add_argument("--json", action="store_true", help="print one JSON object (logs go to stderr)")
    args = ap.parse_args()
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    if args.width % args.heads:
        raise SystemExit(f"--heads {args.heads} must divide --d-model {args.width}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (is this a CUDA build of torch?)")
    log = sys.stderr if args.json else sys.stdout

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    state = tie_state(args.tying, args.layers)
    model = GPT2(args.layers, args.width, args.heads, args.ctx, args.vocab, args.dropout, state, args.recompute).to(dev)
    model.train()
    # Decay linear weight matrices only; wte (= lm_head) is 2-D but an embedding.
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("wte", "wpe"))]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and not n.startswith(("wte", "wpe")))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
    )
    params = sum(p.numel() for p in model.parameters())  # shared parameters count once

    compiled = None
    run = model
    if args.compile:
        try:
            run = torch.compile(model)
            compiled = "ok"
        except Exception as e:  # report, and time eager instead
            compiled = f"failed: {e}"
            print(f"torch.compile failed ({e}); timing eager", file=log)

    g = torch.Generator().manual_seed(args.seed + 1)
    idx = torch.randint(0, args.vocab, (args.batch, args.ctx), generator=g).to(dev)
    tgt = torch.randint(0, args.vocab, (args.batch, args.ctx), generator=g).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times, losses = [], []
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        try:
            loss = run(idx, tgt)
        except Exception as e:
            if run is model:
                raise
            compiled = f"failed at run time: {e}"
            print(f"torch.compile failed at run time ({e}); timing eager", file=log)
            run = model
            loss = run(idx, tgt)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        sync()
        secs = time.perf_counter() - start
        losses.append(loss.item())
        print(f"step {step}: loss {losses[-1]:.4f}, {secs * 1e3:.1f} ms", file=log)
        if step >= args.warmup:
            times.append(secs)

    med = statistics.median(times)
    result = {
        "framework": f"pytorch {torch.__version__}",
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "compile": compiled,
        "config": {k: getattr(args, k) for k in (
            "layers", "width", "heads", "ctx", "batch", "vocab", "dropout", "tying", "lr", "beta1",
            "beta2", "eps", "weight_decay", "grad_clip", "seed", "steps", "warmup", "recompute")},
        "tie_state": state,
        "params": params,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "tokens_per_step": args.batch * args.ctx,
        "tokens_per_s": args.batch * args.ctx / med,
        "ms_per_step_median": med * 1e3,
        "ms_per_step_min": min(times) * 1e3,
        "losses": losses,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
    }
    # The comparable peak: the allocator's on a GPU, the process's RSS on the CPU.
    result["peak_bytes"] = result["peak_cuda_bytes"] if dev.type == "cuda" else result["peak_rss_bytes"]
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['framework']} {args.device}: {args.layers} layers, width {args.width}, "
              f"{args.heads} heads, T={args.ctx}, B={args.batch}, vocab {args.vocab}, tying {args.tying}: "
              f"{params} params, {result['threads']} threads")
        print(f"median step {med * 1e3:.1f} ms (min {min(times) * 1e3:.1f}) over {args.steps} steps: "
              f"{result['tokens_per_s']:.0f} tokens/s; peak {result['peak_bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
