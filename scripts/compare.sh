#!/usr/bin/env bash
# dyntie vs the PyTorch eager baseline on one configuration, in one sitting.
#
#   scripts/compare.sh [dyntie bench flags...]
#   scripts/compare.sh --backend cpu --layers 6 --d-model 256 --heads 8 --ctx 128 --batch 8 --vocab 50257 --tying all
#
# Runs `dyntie bench throughput --json` and benches/pytorch_baseline.py
# --json alternately for ROUNDS rounds, the baseline on exactly the config
# dyntie reports (layers, width, heads, context, batch, vocab, dropout, tie
# state, optimizer settings, seed), then prints tokens/s (median over rounds),
# peak memory and the dyntie/PyTorch ratios. --backend cuda runs the baseline
# with --device cuda; anything else with --device cpu and the same thread
# count as dyntie (THREADS, default: nproc).
#
# Environment: DYNTIE_BIN (default target/release/dyntie, built if missing),
# PYTHON (default python3; needs torch), ROUNDS (3), STEPS (10), WARMUP (2),
# THREADS, COMPARE_JSON (also write the summary as JSON to this file),
# COMPARE_KEEP (a folder to keep every round's JSON in).
set -uo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-2}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-$(nproc)}

if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    echo "compare.sh: '$PYTHON' cannot import torch; install it (pip install torch) or set PYTHON=/path/to/python with torch" >&2
    exit 2
fi

if [[ -n "${DYNTIE_BIN:-}" ]]; then
    BIN=$DYNTIE_BIN
else
    BIN=target/release/dyntie
    if [[ ! -x $BIN ]]; then
        echo "compare.sh: building $BIN (cargo build --release)" >&2
        cargo build --release --bin dyntie >&2 || { echo "compare.sh: the release build failed" >&2; exit 2; }
    fi
fi
[[ -x $BIN ]] || { echo "compare.sh: $BIN is not an executable (set DYNTIE_BIN)" >&2; exit 2; }

device=cpu
prev=
for a in "$@"; do
    [[ $prev == --backend && $a == cuda ]] && device=cuda
    [[ $a == --backend=cuda ]] && device=cuda
    prev=$a
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The baseline's flags for the config a dyntie report describes.
baseline_flags() {
    "$PYTHON" - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = r["model"]
if r["tie_grad"] != "shared":
    print(f"compare.sh: dyntie runs --tie-grad {r['tie_grad']}; the baseline shares gradients", file=sys.stderr)
print(" ".join(str(x) for x in [
    "--layers", m["n_layer"], "--d-model", m["n_embd"], "--heads", m["n_head"], "--ctx", m["n_ctx"],
    "--batch", r["batch"], "--vocab", m["vocab_size"], "--dropout", m["dropout"],
    "--tying", "pattern:" + ",".join(map(str, r["tie_state"])), "--seed", r["seed"],
    "--lr", r["optimizer"]["lr"], "--beta1", r["optimizer"]["beta1"], "--beta2", r["optimizer"]["beta2"],
    "--eps", r["optimizer"]["eps"], "--weight-decay", r["optimizer"]["weight_decay"],
    "--grad-clip", r["optimizer"]["grad_clip"]] + (["--recompute"] if r.get("recompute") else [])))
PY
}

for ((r = 1; r <= ROUNDS; r++)); do
    echo "round $r/$ROUNDS: dyntie" >&2
    if ! RAYON_NUM_THREADS=$THREADS "$BIN" bench throughput "$@" --steps "$STEPS" --warmup "$WARMUP" --json \
        >"$work/dyntie_$r.json" 2>"$work/dyntie_$r.err"; then
        echo "compare.sh: dyntie bench throughput failed:" >&2
        tail -5 "$work/dyntie_$r.err" >&2
        exit 1
    fi
    flags=$(baseline_flags "$work/dyntie_$r.json") || exit 1
    echo "round $r/$ROUNDS: pytorch $flags" >&2
    # shellcheck disable=SC2086 # $flags is a list of words
    if ! "$PYTHON" benches/pytorch_baseline.py $flags --device "$device" --threads "$THREADS" \
        --steps "$STEPS" --warmup "$WARMUP" --json >"$work/torch_$r.json" 2>"$work/torch_$r.err"; then
        echo "compare.sh: the PyTorch baseline failed:" >&2
        tail -5 "$work/torch_$r.err" >&2
        exit 1
    fi
done
if [[ -n "${COMPARE_KEEP:-}" ]]; then
    mkdir -p "$COMPARE_KEEP" && cp "$work"/*.json "$COMPARE_KEEP"/
fi

"$PYTHON" - "$work" "$ROUNDS" "$device" "${COMPARE_JSON:-}" <<'PY'
import json, statistics, sys
work, rounds, device, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
d = [json.load(open(f"{work}/dyntie_{i}.json")) for i in range(1, rounds + 1)]
t = [json.load(open(f"{work}/torch_{i}.json")) for i in range(1, rounds + 1)]
med = statistics.median
# Comparable peaks: the allocators' on a GPU; the process's peak RSS on the CPU.
if device == "cuda":
    d_peak = max(x["measured"]["peak_bytes"] for x in d)
    t_peak = max(x["peak_cuda_bytes"] for x in t)
    what = "allocator peak (dyntie mem_stats, torch.cuda.max_memory_allocated)"
else:
    d_peak = max(x["peak_rss_bytes"] for x in d)
    t_peak = max(x["peak_rss_bytes"] for x in t)
    what = "process peak RSS"
s = {
    "device": device,
    "rounds": rounds,
    "config": {"model": d[0]["model"], "batch": d[0]["batch"], "tie_state": d[0]["tie_state"]},
    "dyntie_backend": d[0]["backend_description"],
    "torch": t[0]["framework"],
    "threads": [d[0]["threads"], t[0]["threads"]],
    "dyntie_tokens_per_s": med(x["tokens_per_s"] for x in d),
    "torch_tokens_per_s": med(x["tokens_per_s"] for x in t),
    "dyntie_tokens_per_s_rounds": [x["tokens_per_s"] for x in d],
    "torch_tokens_per_s_rounds": [x["tokens_per_s"] for x in t],
    "dyntie_peak_bytes": d_peak,
    "torch_peak_bytes": t_peak,
    "peak_measure": what,
    "dyntie_params": d[0]["params"],
    "torch_params": t[0]["params"],
}
s["tokens_per_s_ratio"] = s["dyntie_tokens_per_s"] / s["torch_tokens_per_s"]
s["peak_ratio"] = d_peak / t_peak
mib = 2**20
print(f"config: {s['config']['model']['n_layer']} blocks x {s['config']['model']['n_embd']}, "
      f"{s['config']['model']['n_head']} heads, T={s['config']['model']['n_ctx']}, B={s['config']['batch']}, "
      f"vocab {s['config']['model']['vocab_size']}, tie state {s['config']['tie_state']}")
print(f"dyntie: {s['dyntie_backend']}; {s['torch']} on {device}; threads {s['threads']}; {rounds} alternating rounds")
print(f"{'':<22}{'dyntie':>14}{'pytorch':>14}{'dyntie/pytorch':>16}")
print(f"{'tokens/s (median)':<22}{s['dyntie_tokens_per_s']:>14.0f}{s['torch_tokens_per_s']:>14.0f}{s['tokens_per_s_ratio']:>16.2f}")
print(f"{'peak MiB':<22}{d_peak / mib:>14.1f}{t_peak / mib:>14.1f}{s['peak_ratio']:>16.2f}")
print(f"{'params':<22}{s['dyntie_params']:>14}{s['torch_params']:>14}")
print(f"peak = {what}")
print("tokens/s per round: dyntie", [round(x) for x in s["dyntie_tokens_per_s_rounds"]],
      "pytorch", [round(x) for x in s["torch_tokens_per_s_rounds"]])
if s["dyntie_params"] != s["torch_params"]:
    print("WARNING: the parameter counts differ; the models are not the same")
if out:
    json.dump(s, open(out, "w"), indent=1)
PY
