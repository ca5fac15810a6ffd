"""Writes tests/fixtures/bert_reference.safetensors, the transformers reference
that tests/model_reference.rs compares dyntie's causal BERT against.

Regenerate (CI never needs this; the fixture is committed). The committed
fixture was made with torch 2.15.0 (run on the CPU) and transformers 5.24.0;
the versions are also stored in the file's metadata and printed:
    pip install torch transformers safetensors numpy
    python scripts/reference/bert_reference.py

The model is transformers' own `BertLMHeadModel` (`is_decoder=True`, eager
attention), small and random: every parameter, including biases, LayerNorm
weights and the token-type embeddings, is drawn again from a seeded
generator so a swapped tensor cannot go unnoticed. It runs in float64 so the
reference is exact to well below the float32 tolerances of the test;
tensors are stored as float32 (losses as float64), under transformers'
names: the test maps them onto dyntie's parameters with the same table the
Hugging Face export uses (`dyntie::model::hf::tensor_names`), so the export's
names are checked against transformers here too.

Contents: every parameter of the state dict (the decoder's weight is the
word embeddings and is not stored twice), `tokens` and `targets` (int64,
-1 = ignored), `logits`, `loss` (cross-entropy of `logits` against
`targets`, mean over the targets not ignored: dyntie's targets are explicit,
not transformers' shifted labels), `grad.<name>` for every parameter, and
`adamw_losses`: the loss before each of 10 AdamW steps on the same batch
(lr 1e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on the linear weight
matrices only, gradient norm clipped to 1.0), as in the GPT-2 fixture.
"""

import os

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import BertConfig, BertLMHeadModel

L, C, H, T, B, V = 2, 32, 2, 16, 2, 97


def make_model(gen):
    cfg = BertConfig(
        vocab_size=V,
        hidden_size=C,
        num_hidden_layers=L,
        num_attention_heads=H,
        intermediate_size=4 * C,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=T,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=None,
        is_decoder=True,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    model = BertLMHeadModel(cfg).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            elif name.endswith("bias") or "LayerNorm" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            elif "embeddings" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            else:
                # Larger than BERT's 0.02, so that the GELUs see inputs of
                # order 1, where the exact erf form and the tanh
                # approximation differ well beyond the test's tolerance.
                p.copy_(0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            # Rounded to float32: the test loads exactly these values.
            p.copy_(p.float().double())
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    return model


def forward(model, tokens):
    # token_type_ids default to zeros; the attention mask to all ones, made
    # causal by is_decoder.
    return model(input_ids=tokens).logits


def loss_of(logits, targets):
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)


def main():
    gen = torch.Generator().manual_seed(4321)
    model = make_model(gen)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    targets = torch.randint(0, V, (B, T), generator=gen)
    targets[0, 5] = -1  # ignored positions: the mean is over the others
    targets[1, 12] = -1

    params = dict(model.named_parameters())
    out = {k: v.detach().float().contiguous() for k, v in params.items()}
    out["tokens"] = tokens
    out["targets"] = targets

    logits = forward(model, tokens)
    loss = loss_of(logits, targets)
    loss.backward()
    out["logits"] = logits.detach().float().reshape(B * T, V).contiguous()
    out["loss"] = loss.detach().reshape(1)
    for k, v in params.items():
        out["grad." + k] = v.grad.float().contiguous()

    # Ten AdamW steps on the same batch; only linear weight matrices decay
    # (not the embeddings, biases or LayerNorm weights).
    model.zero_grad(set_to_none=True)
    decays = {k: v.dim() == 2 and "embeddings" not in k for k, v in params.items()}
    opt = torch.optim.AdamW(
        [
            {"params": [v for k, v in params.items() if decays[k]], "weight_decay": 0.1},
            {"params": [v for k, v in params.items() if not decays[k]], "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = loss_of(forward(model, tokens), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        losses.append(loss.item())
    out["adamw_losses"] = torch.tensor(losses, dtype=torch.float64)

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "tests", "fixtures", "bert_reference.safetensors")
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    save_file(out, os.path.normpath(path), metadata=versions)
    print(versions, "loss", out["loss"].item(), "adamw", losses[0], "->", losses[-1])


if __name__ == "__main__":
    main()
