#!/usr/bin/env bash
# The GPU check (docs: shared design GPU-CHECK.md): does dyntie work, and how
# fast, on a real card? One run of a few minutes on a GPU machine with no Rust
# toolchain and no network, using a prebuilt release binary.
#
#   scripts/gpu-check.sh OUT_DIR              # on the GPU machine
#   BACKEND=emu scripts/gpu-check.sh OUT_DIR  # the same logic here, under the
#                                             # emulator, tiny sizes, no PyTorch
#
# Environment: DYNTIE_BIN (default target/release/dyntie), PYTHON (python3),
# BACKEND (cuda or emu). Writes at most 8 files into OUT_DIR; every step has a
# timeout, a failing step is recorded and the script goes on; the exit status
# is non-zero if any step failed. The summary table comes last (summary.txt,
# and on stdout).
set -uo pipefail

OUT=${1:?usage: scripts/gpu-check.sh OUT_DIR}
cd "$(dirname "$0")/.."
BIN=${DYNTIE_BIN:-target/release/dyntie}
PYTHON=${PYTHON:-python3}
BACKEND=${BACKEND:-cuda}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[[ -x $BIN ]] || { echo "gpu-check: no dyntie binary at $BIN (set DYNTIE_BIN)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

case $BACKEND in
cuda)
    # GPT-2-small-like: 12 x 768, 12 heads; context and batch sized so that
    # every step below fits its timeout on an H100.
    BENCH=(--layers 12 --d-model 768 --heads 12 --ctx 512 --batch 8 --vocab 50257 --dropout 0.0)
    TRAIN=(--preset tiny --steps 60)
    BENCH_STEPS=5 ROUNDS=3
    T_DOCTOR=120 T_TRAIN=90 T_BENCH=60 T_MEM=60 T_COMPARE=150 T_KERNELS=90
    DOCTOR=(doctor)
    ;;
emu)
    BENCH=(--layers 2 --d-model 32 --heads 2 --ctx 16 --batch 2 --vocab 64 --dropout 0.0)
    TRAIN=(--preset tiny --layers 2 --d-model 32 --heads 2 --ctx 16 --batch 2 --steps 4)
    BENCH_STEPS=1 ROUNDS=1
    T_DOCTOR=600 T_TRAIN=300 T_BENCH=300 T_MEM=300 T_COMPARE=0 T_KERNELS=120
    DOCTOR=(doctor --emu)
    ;;
*)
    echo "gpu-check: BACKEND=$BACKEND is unknown: use cuda or emu" >&2
    exit 2
    ;;
esac

status=()  # "step: ok|FAILED (why)" lines for the summary
record() { # record NAME RC
    if [[ $2 -eq 0 ]]; then
        status+=("$1: ok")
    elif [[ $2 -eq 124 ]]; then
        status+=("$1: FAILED (timed out)")
    else
        status+=("$1: FAILED (exit $2)")
    fi
}

# 1. The card, and every kernel against the CPU reference.
if [[ $BACKEND == cuda ]]; then
    timeout 30 nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    record nvidia-smi $?
fi
echo "== dyntie doctor" >&2
timeout "$T_DOCTOR" "$BIN" "${DOCTOR[@]}" >"$OUT/doctor.txt" 2>&1
record doctor $?

# 2. The same short training run on the kernels in bf16 (mixed precision)
# and on the CPU backend in fp32.
echo "== training, $BACKEND bf16 vs cpu fp32" >&2
{
    for be in "$BACKEND" cpu; do
        precision=fp32
        [[ $be == cpu ]] || precision=bf16
        echo "### dyntie train ${TRAIN[*]} --tying none --backend $be --precision $precision"
        timeout "$T_TRAIN" "$BIN" train "${TRAIN[@]}" --tying none --backend "$be" --precision "$precision" \
            --out "$work/train_$be" --force 2>&1 | tail -5
        echo "exit ${PIPESTATUS[0]}"
    done
    echo "### losses"
    "$PYTHON" - "$work/train_$BACKEND/metrics.jsonl" "$work/train_cpu/metrics.jsonl" <<'PY'
import json, sys
def losses(path):
    return {r["step"]: r["loss"] for r in map(json.loads, open(path)) if r.get("kind") == "train"}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
common = sorted(set(a) & set(b))
if not common:
    sys.exit("no common logged steps")
worst = 0.0
for s in common:
    rel = abs(a[s] - b[s]) / max(abs(b[s]), 1e-6)
    worst = max(worst, rel)
    print(f"step {s:>5}: kernels {a[s]:.5f}  cpu {b[s]:.5f}  rel diff {rel:.2e}")
# bf16 against fp32 drifts slowly (tests/precision.rs: 2% over 200 steps);
# a wrong kernel is off by far more.
ok = worst < 2e-2
print(f"loss agreement: max rel diff {worst:.2e} over {len(common)} steps: {'ok' if ok else 'FAIL'} (tol 2e-2)")
sys.exit(0 if ok else 1)
PY
} >"$OUT/train-compare.txt" 2>&1
record "training $BACKEND vs cpu" $?

# 3. Throughput and memory, conventional and all-tied, and PyTorch alongside:
# in fp32, like the PyTorch baseline and the MFU's fp32 peak; then the
# conventional model once more in bf16 (mixed precision).
echo "== bench throughput" >&2
: >"$OUT/bench-throughput.txt"
for run in "none fp32" "all fp32" "none bf16"; do
    read -r tying precision <<<"$run"
    name=$tying
    [[ $precision == bf16 ]] && name=${tying}_bf16
    timeout "$T_BENCH" "$BIN" bench throughput "${BENCH[@]}" --backend "$BACKEND" --tying "$tying" \
        --precision "$precision" --steps "$BENCH_STEPS" --warmup 1 --json \
        >"$work/throughput_$name.json" 2>>"$OUT/bench-throughput.txt"
    rc=$?
    record "bench throughput --tying $tying --precision $precision" $rc
    [[ $rc -eq 0 ]] && "$PYTHON" - "$work/throughput_$name.json" "$precision" >>"$OUT/bench-throughput.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"### tying {r['tying']}, {sys.argv[2]}: {r['backend_description']}")
print(json.dumps({k: v for k, v in r.items() if k not in ("ops", "counted")}))
for o in r["ops"]:
    print(f"  {o['op']:<16} {o['calls_per_step']:>6.0f} calls {o['ms_per_step']:>9.2f} ms/step {100 * o['share']:5.1f}%")
PY
done
echo "== bench memory --measure" >&2
timeout "$T_MEM" "$BIN" bench memory "${BENCH[@]}" --backend "$BACKEND" --patterns none all --measure \
    >"$OUT/bench-memory.txt" 2>&1
record "bench memory --measure" $?
# The same with activation recomputation, which should cut the activations.
timeout "$T_MEM" "$BIN" bench memory "${BENCH[@]}" --backend "$BACKEND" --patterns none all --measure \
    --recompute >>"$OUT/bench-memory.txt" 2>&1
record "bench memory --measure --recompute" $?
# The other attention path, measured: the backend's default precision above
# (cuda bf16: flash; emu fp32: unfused), the other one here.
other=$([[ $BACKEND == cuda ]] && echo fp32 || echo bf16)
timeout "$T_MEM" "$BIN" bench memory "${BENCH[@]}" --backend "$BACKEND" --patterns none --measure \
    --precision "$other" >>"$OUT/bench-memory.txt" 2>&1
record "bench memory --measure --precision $other" $?
if [[ $BACKEND == cuda ]]; then
    echo "== compare.sh against PyTorch" >&2
    for tying in none all; do
        echo "### --tying $tying"
        COMPARE_JSON="$work/compare_$tying.json" ROUNDS=$ROUNDS STEPS=$BENCH_STEPS WARMUP=1 \
            DYNTIE_BIN=$BIN PYTHON=$PYTHON timeout $((T_COMPARE / 2)) scripts/compare.sh \
            "${BENCH[@]}" --backend cuda --precision fp32 --tying "$tying" 2>&1
        record "compare.sh --tying $tying" $?
    done >"$OUT/compare.txt"
fi

# 4. Every matrix product of a step in fp32 and bf16 (under the emulator:
# checked against the CPU at cut-down sizes), and on a GPU torch.matmul
# (cuBLAS) at the same shapes for the ratio.
echo "== bench kernels" >&2
timeout "$T_KERNELS" "$BIN" bench kernels --backend "$BACKEND" >"$OUT/bench-kernels.txt" 2>&1
record "bench kernels" $?
if [[ $BACKEND == cuda ]]; then
    echo "### torch.matmul (cuBLAS) at the same shapes" >>"$OUT/bench-kernels.txt"
    timeout "$T_KERNELS" "$PYTHON" benches/torch_matmul.py --dyntie "$OUT/bench-kernels.txt" \
        >>"$OUT/bench-kernels.txt" 2>&1
    record "torch.matmul shapes" $?
fi
# Flash attention's forward and backward (the table's `flash fwd` and `flash
# bwd` rows: GPT-2 124M B8 H12 T1024 D64, paper B16 H16 T256 D100) beside
# PyTorch's scaled_dot_product_attention on the same card.
if [[ $BACKEND == cuda ]]; then
    echo "### torch scaled_dot_product_attention at the flash rows' shapes" >>"$OUT/bench-kernels.txt"
    if timeout 60 "$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
        timeout "$T_KERNELS" "$PYTHON" benches/torch_attention.py --dyntie "$OUT/bench-kernels.txt" \
            >>"$OUT/bench-kernels.txt" 2>&1
        record "torch sdpa shapes" $?
    else
        echo "skipped: $PYTHON has no torch with CUDA" >>"$OUT/bench-kernels.txt"
        status+=("torch sdpa shapes: skipped ($PYTHON has no torch with CUDA)")
    fi
fi

# 5. The summary, last.
{
    echo "gpu-check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), backend $BACKEND"
    [[ -s $OUT/nvidia-smi.txt ]] && grep -m1 -E "NVIDIA|Tesla" "$OUT/nvidia-smi.txt" | grep -v "NVIDIA-SMI" | head -1
    echo "kernels: $(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/doctor.txt" | tr '\n' ';' || true)"
    echo "training: $(grep '^loss agreement' "$OUT/train-compare.txt" || echo 'no comparison (see train-compare.txt)')"
    echo "flash attention (model, op, ms; torch sdpa ms and torch / dyntie where timed):"
    grep -E '^\S+\s+flash (fwd|bwd)' "$OUT/bench-kernels.txt" | sed 's/^/  /' || true
    "$PYTHON" - "$work" <<'PY'
import json, os, sys
work = sys.argv[1]
mib = 2**20
def have(p):
    return os.path.exists(p) and os.path.getsize(p) > 0

for tying in ("none", "all", "none_bf16"):
    p = f"{work}/throughput_{tying}.json"
    if have(p):
        r = json.load(open(p))
        mfu = f", MFU {100 * r['mfu']:.1f}% of the {r['precision']} peak" if r.get("mfu") is not None else ""
        print(f"throughput --tying {tying}: {r['tokens_per_s']:.0f} tokens/s, {r['ms_per_step_median']:.1f} ms/step"
              f"{mfu}; peak {r['measured']['peak_bytes'] / mib:.1f} MiB (counted {r['counted']['total_bytes'] / mib:.1f})")
    p = f"{work}/compare_{tying}.json"
    if have(p):
        c = json.load(open(p))
        print(f"vs PyTorch --tying {tying}: {c['dyntie_tokens_per_s']:.0f} vs {c['torch_tokens_per_s']:.0f} tokens/s "
              f"(x{c['tokens_per_s_ratio']:.2f}); peak {c['dyntie_peak_bytes'] / mib:.0f} vs {c['torch_peak_bytes'] / mib:.0f} MiB "
              f"(x{c['peak_ratio']:.2f})")
PY
    echo "steps:"
    printf '  %s\n' "${status[@]}"
} >"$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
for s in "${status[@]}"; do
    [[ $s == *FAILED* ]] && exit 1
done
exit 0
