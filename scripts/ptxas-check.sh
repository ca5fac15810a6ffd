#!/usr/bin/env bash
# Assembles every kernel's PTX (written by build.rs to target/ptx/) with
# `ptxas -v` for sm_80 and sm_90 and prints registers, shared memory and
# local memory per kernel. Fails on any register spill or stack frame (local
# memory), unless the kernel is named in PTXAS_ALLOW_LOCAL (space-separated).
# No GPU needed. Needs scripts/install-cuda-tools.sh and a cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."

PTXAS="${PTXAS:-}"
if [ -z "$PTXAS" ]; then
    for p in .cuda-tools/nvidia/cuda_nvcc/bin/ptxas "${CUDA_PATH:-/usr/local/cuda}/bin/ptxas"; do
        if [ -x "$p" ]; then PTXAS="$p"; break; fi
    done
fi
if [ -z "$PTXAS" ]; then
    echo "error: ptxas not found; run scripts/install-cuda-tools.sh or set PTXAS" >&2
    exit 1
fi
PTX_DIR="${CARGO_TARGET_DIR:-target}/ptx"
shopt -s nullglob
files=("$PTX_DIR"/*.ptx)
if [ ${#files[@]} -eq 0 ]; then
    echo "error: no PTX in $PTX_DIR; run scripts/install-cuda-tools.sh, then cargo build" >&2
    exit 1
fi
allow=" ${PTXAS_ALLOW_LOCAL:-} "

status=0
printf '%-28s %-6s %5s %10s %10s %7s %7s\n' kernel arch regs smem_bytes stack spill_st spill_ld
for ptx in "${files[@]}"; do
    # elementwise.compute_80.ptx -> sm_80
    arch="sm_${ptx##*.compute_}"
    arch="${arch%.ptx}"
    if ! out=$("$PTXAS" -v --gpu-name "$arch" -o /dev/null "$ptx" 2>&1); then
        echo "$out" >&2
        echo "error: ptxas failed on $ptx" >&2
        status=1
        continue
    fi
    # ptxas -v prints, per kernel: "Function properties for K", then the
    # stack/spill line, then "Used N registers, [M bytes smem, ]...".
    while IFS=$'\t' read -r kernel regs smem stack spst spld; do
        printf '%-28s %-6s %5s %10s %10s %7s %7s\n' "$kernel" "$arch" "$regs" "$smem" "$stack" "$spst" "$spld"
        if [ "$spst" != 0 ] || [ "$spld" != 0 ] || { [ "$stack" != 0 ] && [[ "$allow" != *" $kernel "* ]]; }; then
            echo "error: $kernel ($arch) uses local memory: $stack bytes stack, $spst/$spld bytes spilled" >&2
            status=1
        fi
    done < <(echo "$out" | awk '
        /Function properties for/ { k = $NF; gsub(/\047/, "", k); next }
        /bytes stack frame/ { stack = $1; spst = $5; spld = $9; next }
        /Used [0-9]+ registers/ {
            regs = 0; smem = 0
            for (i = 1; i <= NF; i++) {
                if ($(i+1) ~ /^registers/) regs = $i
                if ($(i+1) == "bytes" && $(i+2) ~ /^smem/) smem = $i
            }
            printf "%s\t%s\t%s\t%s\t%s\t%s\n", k, regs, smem, stack, spst, spld
        }')
done
if [ $status -ne 0 ]; then
    echo "ptxas check FAILED" >&2
else
    echo "ptxas check passed (${#files[@]} PTX files)"
fi
exit $status
