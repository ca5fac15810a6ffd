"""PyTorch eager baseline for dyntie's throughput benchmarks.

Times one training step (forward, backward, gradient clipping to 1.0, AdamW)
of the same GPT-2 that dyntie trains (pre-LN, fused qkv, causal attention,
tanh-GELU, output head tied to wte, fp32) and prints tokens/s and peak memory.

    pip install torch
    python benches/pytorch_baseline.py --threads 2            # CPU, like cargo bench --bench cpu_step
    python benches/pytorch_baseline.py --device cuda --layers 12 --width 768 --heads 12 --ctx 1024
"""

import argparse
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.ln2 = nn.LayerNorm(c)
        self.fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)

    def forward(self, x, mask):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        # Explicit softmax attention, as dyntie computes it (no fused kernel).
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        att = att.masked_fill(~mask[:t, :t], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, layers, c, heads, ctx, vocab):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(ctx, c)
        self.blocks = nn.ModuleList(Block(c, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c)
        self.register_buffer("mask", torch.tril(torch.ones(ctx, ctx, dtype=torch.bool)))
        for n, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if n.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x, self.mask)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT2(args.layers, args.width, args.heads, args.ctx, args.vocab).to(dev)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
    )
    idx = torch.randint(0, args.vocab, (args.batch, args.ctx), device=dev)
    tgt = torch.randint(0, args.vocab, (args.batch, args.ctx), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = model(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        secs = time.perf_counter() - start
        print(f"step {step}: loss {loss.item():.4f}, {secs:.3f} s")
        if step >= args.warmup:
            times.append(secs)

    median = statistics.median(times)
    params = sum(p.numel() for p in model.parameters())
    print(f"pytorch {torch.__version__} {args.device}: {args.layers} layers, width {args.width}, "
          f"{args.heads} heads, T={args.ctx}, B={args.batch}, vocab {args.vocab}: {params} params, "
          f"{torch.get_num_threads()} threads")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = f"median step {median:.3f} s over {args.steps} steps: {args.batch * args.ctx / median:.0f} tokens/s; peak RSS {rss:.1f} MiB"
    if dev.type == "cuda":
        line += f"; peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB"
    print(line)


if __name__ == "__main__":
    main()
