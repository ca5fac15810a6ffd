"""Checks a `dyntie export --format hf` folder with Hugging Face transformers:
loads it as the model its config.json names (GPT2LMHeadModel or
BertLMHeadModel) and compares, against what dyntie computed and stored in
dyntie_check.json:

- the logits on a fixed input (largest difference within 1e-4 of the
  largest logit),
- the greedy continuation of the first validation window's first half
  (identical tokens),
- the perplexity on the first validation windows (within 1%).

    pip install torch transformers safetensors
    python scripts/check_hf_export.py EXPORT_DIR

Exits non-zero when any check fails. Not run in CI (it needs torch and
transformers); scripts/check_bert_export.sh trains, exports and runs it.
"""

import json
import math
import sys

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM


def greedy(model, prompt, new_tokens, n_ctx):
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            window = torch.tensor([tokens[-n_ctx:]])
            tokens.append(int(model(window).logits[0, -1].argmax()))
    return tokens[len(prompt):]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    folder = sys.argv[1]
    with open(f"{folder}/dyntie_check.json") as f:
        check = json.load(f)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    print(f"loaded {type(model).__name__} from {folder}")
    ok = True

    ids = torch.tensor([check["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    ours = torch.tensor(check["logits"], dtype=torch.float64).reshape(logits.shape)
    diff = (logits - ours).abs().max().item()
    scale = ours.abs().max().item()
    good = diff <= 1e-4 * max(scale, 1.0)
    ok &= good
    print(f"logits: max |transformers - dyntie| = {diff:.3e} (largest logit {scale:.3f}): {'ok' if good else 'MISMATCH'}")

    valid = check["valid"]
    inputs = torch.tensor(valid["inputs"])
    n_ctx = inputs.shape[1]
    theirs = greedy(model, valid["greedy_prompt"], len(valid["greedy"]), n_ctx)
    good = theirs == valid["greedy"]
    ok &= good
    print(f"greedy continuation of {len(valid['greedy_prompt'])} tokens: dyntie {valid['greedy']}")
    print(f"                                   transformers {theirs}: {'identical' if good else 'DIFFERENT'}")

    targets = torch.tensor(valid["targets"])
    with torch.no_grad():
        out = model(inputs).logits.double()
    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1), ignore_index=-1).item()
    ppl, ours_ppl = math.exp(loss), math.exp(valid["loss"])
    rel = abs(ppl - ours_ppl) / ours_ppl
    good = rel < 0.01
    ok &= good
    print(
        f"validation perplexity on {inputs.shape[0]} windows of {n_ctx}: dyntie {ours_ppl:.4f}, "
        f"transformers {ppl:.4f} ({100 * rel:.4f}% apart): {'ok' if good else 'MISMATCH'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
