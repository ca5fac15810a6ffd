"""Checks a `dyntie export --format hf` folder with Hugging Face transformers:
loads it as GPT2LMHeadModel and compares its logits on the input stored in
dyntie_check.json with the logits dyntie computed for that input.

    pip install torch transformers safetensors
    python scripts/check_hf_export.py EXPORT_DIR

Exits non-zero when the largest difference exceeds 1e-4 relative to the
largest logit. Not run in CI (it needs torch and transformers).
"""

import json
import sys

import torch
from transformers import GPT2LMHeadModel


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    folder = sys.argv[1]
    with open(f"{folder}/dyntie_check.json") as f:
        check = json.load(f)
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = torch.tensor([check["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    ours = torch.tensor(check["logits"], dtype=torch.float64).reshape(logits.shape)
    diff = (logits - ours).abs().max().item()
    scale = ours.abs().max().item()
    ok = diff <= 1e-4 * max(scale, 1.0)
    print(f"max |transformers - dyntie| = {diff:.3e} (largest logit {scale:.3f}): {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
