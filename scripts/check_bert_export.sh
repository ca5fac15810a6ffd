#!/usr/bin/env bash
# Trains a small causal BERT with dynamic tying on tiny-shakespeare, exports
# it with `dyntie export --format hf` and checks it with transformers
# (scripts/check_hf_export.py): logits, greedy continuation identical,
# validation perplexity within 1%. Not part of `cargo test` or CI: it needs
# torch and transformers (pip install torch transformers safetensors).
#
#   bash scripts/check_bert_export.sh [DATA_DIR] [STEPS]
#
# DATA_DIR defaults to ../shared/data (or $DYNTIE_DATA); PYTHON to python3;
# DYNTIE_BIN to a release build made here.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-${DYNTIE_DATA:-../shared/data}}"
steps="${2:-200}"
python="${PYTHON:-python3}"
if [ ! -d "$data/tiny-shakespeare" ]; then
    echo "no $data/tiny-shakespeare: give the shared data folder as the first argument" >&2
    exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
bin="${DYNTIE_BIN:-}"
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin=./target/release/dyntie
fi
input="$(ls "$data"/tiny-shakespeare/*.txt | head -n 1)"
$bin prepare --dataset text --input "$input" --out "$work/data"
$bin train --arch bert --preset bert-tiny --data "$work/data" --ctx 64 --steps "$steps" \
    --tying dynamic --backend cpu --out "$work/run"
$bin export --run "$work/run" --format hf --out "$work/hf"
"$python" scripts/check_hf_export.py "$work/hf"
