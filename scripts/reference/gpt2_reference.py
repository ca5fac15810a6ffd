"""Writes tests/fixtures/gpt2_reference.safetensors, the PyTorch reference that
tests/model_reference.rs compares dyntie's GPT-2 against.

Regenerate (CI never needs this; the fixture is committed):
    pip install torch safetensors numpy
    python scripts/reference/gpt2_reference.py

The model is dyntie's GPT-2 written out in plain PyTorch with dyntie's
parameter names and [out, in] weight orientation: pre-LN blocks, fused qkv,
causal attention, tanh-GELU MLP, output head tied to wte. Everything runs in
float64 so the reference is exact to well below the float32 tolerances of the
test; tensors are stored as float32 (losses as float64).

Contents: every parameter (random, including biases and LayerNorm weights, so
a swapped tensor cannot go unnoticed), `tokens` and `targets` (int64, -1 =
ignored), `logits`, `loss`, `grad.<name>` for every parameter, and
`adamw_losses`: the loss before each of 10 AdamW steps on the same batch
(lr 1e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on 2-D tensors only,
gradient norm clipped to 1.0).
"""

import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

L, C, H, T, B, V = 2, 32, 2, 16, 2, 97
EPS = 1e-5


def make_params(gen):
    def randn(*shape, std=0.02, mean=0.0):
        return (mean + std * torch.randn(*shape, generator=gen, dtype=torch.float64))

    p = {
        "wte": randn(V, C),
        "wpe": randn(T, C),
        "ln_f.weight": randn(C, std=0.1, mean=1.0),
        "ln_f.bias": randn(C, std=0.1),
    }
    for i in range(L):
        h = f"h.{i}."
        p[h + "ln1.weight"] = randn(C, std=0.1, mean=1.0)
        p[h + "ln1.bias"] = randn(C, std=0.1)
        p[h + "attn.qkv.weight"] = randn(3 * C, C)
        p[h + "attn.qkv.bias"] = randn(3 * C)
        p[h + "attn.proj.weight"] = randn(C, C)
        p[h + "attn.proj.bias"] = randn(C)
        p[h + "ln2.weight"] = randn(C, std=0.1, mean=1.0)
        p[h + "ln2.bias"] = randn(C, std=0.1)
        p[h + "mlp.fc.weight"] = randn(4 * C, C)
        p[h + "mlp.fc.bias"] = randn(4 * C)
        p[h + "mlp.proj.weight"] = randn(C, 4 * C)
        p[h + "mlp.proj.bias"] = randn(C)
    # Rounded to float32 first: the test loads exactly these values.
    return {k: v.float().double().requires_grad_() for k, v in p.items()}


def forward(p, tokens):
    b, t = tokens.shape
    x = p["wte"][tokens] + p["wpe"][:t]
    mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
    for i in range(L):
        h = f"h.{i}."
        a = F.layer_norm(x, (C,), p[h + "ln1.weight"], p[h + "ln1.bias"], EPS)
        qkv = a @ p[h + "attn.qkv.weight"].T + p[h + "attn.qkv.bias"]
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, C)
        x = x + y @ p[h + "attn.proj.weight"].T + p[h + "attn.proj.bias"]
        m = F.layer_norm(x, (C,), p[h + "ln2.weight"], p[h + "ln2.bias"], EPS)
        m = F.gelu(m @ p[h + "mlp.fc.weight"].T + p[h + "mlp.fc.bias"], approximate="tanh")
        x = x + m @ p[h + "mlp.proj.weight"].T + p[h + "mlp.proj.bias"]
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], EPS)
    return x @ p["wte"].T


def loss_of(logits, targets):
    return F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)


def main():
    gen = torch.Generator().manual_seed(1234)
    params = make_params(gen)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    targets = torch.randint(0, V, (B, T), generator=gen)
    targets[0, 3] = -1  # ignored positions: the mean is over the others
    targets[1, 10] = -1

    out = {k: v.detach().float().contiguous() for k, v in params.items()}
    out["tokens"] = tokens
    out["targets"] = targets

    logits = forward(params, tokens)
    loss = loss_of(logits, targets)
    loss.backward()
    out["logits"] = logits.detach().float().reshape(B * T, V).contiguous()
    out["loss"] = loss.detach().reshape(1)
    for k, v in params.items():
        out["grad." + k] = v.grad.float().contiguous()

    # Ten AdamW steps on the same batch, with nanoGPT's decay groups.
    for v in params.values():
        v.grad = None
    decay = [v for v in params.values() if v.dim() == 2]
    no_decay = [v for v in params.values() if v.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = loss_of(forward(params, tokens), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        losses.append(loss.item())
    out["adamw_losses"] = torch.tensor(losses, dtype=torch.float64)

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "tests", "fixtures", "gpt2_reference.safetensors")
    save_file(out, os.path.normpath(path))
    print("loss", loss_of(logits, targets).item(), "adamw", losses[0], "->", losses[-1])


if __name__ == "__main__":
    main()
