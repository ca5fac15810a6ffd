#!/usr/bin/env bash
# Reads the sm_90 machine code (SASS) of every kernel, which the emulator
# cannot judge, and fails when it is not what the source means it to be:
#   - the main loops of the bf16 GEMM (gemm_mma_*) and of flash attention
#     (attention_flash_*, forward and both backward kernels) must contain
#     HMMA.16816.F32.BF16 (tensor cores, fp32 accumulate), LDSM (ldmatrix)
#     and, except in the GEMM's _unaligned fallbacks, LDGSTS (cp.async);
#   - no kernel may touch local memory (LDL/STL: spills or stack arrays)
#     unless named in SASS_ALLOW_LOCAL (space-separated).
#   - the kernels whose results must not depend on the order threads and
#     blocks run in (DETERMINISTIC below: the layernorm backward and the
#     step's sums) may contain no ATOMS (shared-memory atomics) and no
#     floating-point global atomics (RED/ATOM/ATOMG .F32/.F64).
# It prints, per kernel: registers, shared memory, the occupancy its launch
# size gets on an H100/H200 (from the register and shared-memory counts
# against sm_90's limits), and the instruction mix of its hot loop (the loop
# with the most HMMA, else the innermost loop with the most instructions):
# tensor-core instructions per shared-memory load and per integer instruction.
# With --out FILE it also writes that table as markdown.
#
# No GPU needed: ptxas assembles build.rs's PTX (target/ptx/*.compute_90.ptx)
# into cubins, cuobjdump/nvdisasm disassemble them (all from the wheels of
# scripts/install-cuda-tools.sh). Run a cargo build first.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        *) echo "usage: $0 [--out FILE.md]" >&2; exit 2 ;;
    esac
done

TOOLS=.cuda-tools/nvidia
PTXAS="${PTXAS:-}"
if [ -z "$PTXAS" ]; then
    for p in "$TOOLS/cuda_nvcc/bin/ptxas" "${CUDA_PATH:-/usr/local/cuda}/bin/ptxas"; do
        if [ -x "$p" ]; then PTXAS="$p"; break; fi
    done
fi
CUOBJDUMP="${CUOBJDUMP:-$TOOLS/cu13/bin/cuobjdump}"
for tool in "$PTXAS" "$CUOBJDUMP" "$(dirname "$CUOBJDUMP")/nvdisasm"; do
    if [ -z "$tool" ] || [ ! -x "$tool" ]; then
        echo "error: ${tool:-ptxas} not found; run scripts/install-cuda-tools.sh (or set PTXAS / CUOBJDUMP)" >&2
        exit 1
    fi
done
# cuobjdump runs nvdisasm, which it looks for on the PATH.
export PATH="$(cd "$(dirname "$CUOBJDUMP")" && pwd):$PATH"

PTX_DIR="${CARGO_TARGET_DIR:-target}/ptx"
shopt -s nullglob
files=("$PTX_DIR"/*.compute_90.ptx)
if [ ${#files[@]} -eq 0 ]; then
    echo "error: no sm_90 PTX in $PTX_DIR; run scripts/install-cuda-tools.sh, then cargo build" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for ptx in "${files[@]}"; do
    stem=$(basename "$ptx" .compute_90.ptx)
    if ! "$PTXAS" -v --gpu-name sm_90 -o "$work/$stem.cubin" "$ptx" >"$work/$stem.ptxas" 2>&1; then
        cat "$work/$stem.ptxas" >&2
        echo "error: ptxas failed on $ptx" >&2
        exit 1
    fi
    "$CUOBJDUMP" -sass "$work/$stem.cubin" >"$work/$stem.sass" 2>/dev/null
    "$CUOBJDUMP" -res-usage "$work/$stem.cubin" >"$work/$stem.res" 2>/dev/null
done
# The launch sizes of the launchers (src/cuda/ops/*.rs) and the bf16 GEMM's
# (kernels/include/params.h: `constexpr int MMA_STAGES = 3;`), for the
# occupancy column.
gemm_smem=$(awk '$1 == "constexpr" && $4 == "=" {v[$3] = $5 + 0}
                 END {print v["MMA_STAGES"] * (v["MMA_BM"] + v["MMA_BN"]) * v["MMA_BK"] * 2}' kernels/include/params.h)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- kernels 2>/dev/null || commit="$commit+uncommitted kernels"

python3 - "$work" "$OUT" "$commit" "$gemm_smem" "${SASS_ALLOW_LOCAL:-}" <<'EOF'
import collections, datetime, glob, os, re, sys

work, out_path, commit, gemm_smem, allow = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].split()

# (threads per block, dynamic shared bytes) per kernel; 1-D kernels use 256.
LAUNCH = {"gemm_bias_grad_f32": (512, 0), "loss_softmax_xent_f32": (512, 0),
          "layernorm_bwd_params_f32": (512, 0), "layernorm_bwd_params_bf16": (512, 0)}
# Name prefixes of the kernels that must be deterministic (no float atomics).
DETERMINISTIC = ("layernorm_bwd_", "optimizer_sum_")
# params.h's constants, for the flash attention kernels' launch sizes.
PARAMS = {}
for m in re.finditer(r"^constexpr \w+ (\w+) = ([^;]+);", open("kernels/include/params.h").read(), re.M):
    try:
        PARAMS[m.group(1)] = int(eval(m.group(2), {}, dict(PARAMS)))
    except Exception:
        pass
def launch(kernel):
    if kernel.startswith("gemm_mma_"):
        return 256, gemm_smem
    m = re.match(r"attention_flash_(fwd|bwd_dq|bwd_dkdv)_d(64|128)_", kernel)
    if m:
        part = {"fwd": "FWD", "bwd_dq": "DQ", "bwd_dkdv": "DKDV"}[m.group(1)]
        return PARAMS["FLASH_THREADS"], PARAMS[f"FLASH_{part}_SMEM_{m.group(2)}"]
    return LAUNCH.get(kernel, (256, 0))

# sm_90 (H100/H200) limits.
SM_REGS, SM_WARPS, SM_BLOCKS, SM_SMEM, BLOCK_SMEM_MAX, RESERVED = 65536, 64, 32, 228 * 1024, 227 * 1024, 1024

def occupancy(regs, smem, threads):
    warps = (threads + 31) // 32
    regs_per_warp = ((max(regs, 1) + 7) // 8) * 8 * 32
    limits = {"warps": SM_WARPS // warps, "regs": SM_REGS // (regs_per_warp * warps),
              "smem": SM_SMEM // (smem + RESERVED), "blocks": SM_BLOCKS}
    blocks = min(limits.values())
    by = min(limits, key=limits.get)
    return blocks, blocks * warps / SM_WARPS, by

INT = re.compile(r"^U?(I[A-Z0-9]*|LOP3|SHF|LEA|SEL|VIADD\w*|VIMNMX\w*|PRMT|MOV|POPC|FLO|BMSK|SGXT|BREV|P2R|R2P|PLOP3)$")
def opcode(text):
    text = re.sub(r"^@!?U?P[T0-9]+\s+", "", text)
    return text.split()[0].split(".")[0]

def parse(sass):
    """{kernel: [(address, instruction text)]}"""
    kernels = {}
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        name = part.split()[0]
        kernels[name] = [(int(m.group(1), 16), m.group(2).strip())
                         for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;", part)]
    return kernels

def hot_loop(ins):
    loops = []
    for addr, text in ins:
        m = re.search(r"\bBRA\s+(?:`\()?(0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) <= addr:
            loops.append((int(m.group(1), 16), addr))
    def body(lo, hi):
        return [t for a, t in ins if lo <= a <= hi]
    def innermost(lo, hi):
        return not any((l, h) != (lo, hi) and lo <= l and h <= hi for l, h in loops)
    best = None
    for lo, hi in loops:
        b = body(lo, hi)
        hmma = sum(opcode(t) == "HMMA" for t in b)
        if hmma == 0 and not innermost(lo, hi):
            continue
        key = (hmma, len(b) if hmma == 0 else -len(b))
        if best is None or key > best[0]:
            best = (key, b)
    return best[1] if best else []

def resources(res):
    out = {}
    for m in re.finditer(r"Function (\w+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res):
        out[m.group(1)] = dict(regs=int(m.group(2)), stack=int(m.group(3)), shared=int(m.group(4)), local=int(m.group(5)))
    return out

rows, errors = [], []
for sass_file in sorted(glob.glob(os.path.join(work, "*.sass"))):
    stem = os.path.basename(sass_file)[:-5]
    kernels = parse(open(sass_file).read())
    res = resources(open(os.path.join(work, stem + ".res")).read())
    ptxas = open(os.path.join(work, stem + ".ptxas")).read()
    if re.search(r"[1-9]\d* bytes spill (stores|loads)", ptxas):
        errors.append(f"{stem}: ptxas reports register spills for sm_90")
    for name in sorted(kernels):
        ins = kernels[name]
        r = res.get(name)
        if r is None:
            errors.append(f"{name}: no resource usage from cuobjdump")
            continue
        ops = collections.Counter(opcode(t) for _, t in ins)
        local = ops["LDL"] + ops["STL"]
        if (local or r["local"] or r["stack"]) and name not in allow:
            errors.append(f"{name}: local memory ({ops['LDL']} LDL, {ops['STL']} STL, {r['stack']} B stack)")
        if name.startswith(DETERMINISTIC):
            atoms = ops["ATOMS"]
            float_atomics = sum(1 for _, t in ins if opcode(t) in ("RED", "ATOM", "ATOMG")
                                and re.search(r"\.F(32|64)\b", t))
            if atoms or float_atomics:
                errors.append(f"{name}: {atoms} ATOMS, {float_atomics} float global atomics in a deterministic kernel")
        threads, dyn = launch(name)
        # cuobjdump's SHARED includes the 1 KiB every block reserves on sm_90.
        static_smem = max(r["shared"] - RESERVED, 0)
        smem = static_smem + dyn
        if smem > BLOCK_SMEM_MAX:
            errors.append(f"{name}: {smem} B of shared memory, over sm_90's {BLOCK_SMEM_MAX} per block")
        blocks, occ, limit = occupancy(r["regs"], smem, threads)
        loop = hot_loop(ins)
        mix = collections.Counter(opcode(t) for t in loop)
        hmma = mix["HMMA"]
        smem_loads = mix["LDSM"] + sum(1 for t in loop if opcode(t) == "LDS" and "RZ, [RZ]" not in t)
        ints = sum(n for op, n in mix.items() if INT.match(op))
        if name.startswith("gemm_mma_") or name.startswith("attention_flash_"):
            exact = sum(1 for t in loop if "HMMA.16816.F32.BF16" in t)
            need = [("HMMA.16816.F32.BF16", exact), ("LDSM", mix["LDSM"])]
            if "_unaligned_" not in name:
                need.append(("LDGSTS", mix["LDGSTS"]))
            for what, n in need:
                if n == 0:
                    errors.append(f"{name}: its main loop has no {what}")
        ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"
        rows.append([name, r["regs"], smem, f"{threads}/{dyn}", f"{blocks} ({occ:.0%}, {limit})",
                     len(loop), hmma, mix["LDSM"], mix["LDGSTS"], ints, mix["FFMA"],
                     ratio(hmma, smem_loads), ratio(hmma, ints)])

head = ["kernel", "regs", "smem B", "launch threads/dyn B", "blocks/SM (occupancy, limit)", "loop instrs",
        "HMMA", "LDSM", "LDGSTS", "int", "FFMA", "HMMA per smem load", "HMMA per int"]
widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
table = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
print("\n".join(table))
if out_path:
    with open(out_path, "w") as f:
        f.write(f"# SASS check, sm_90, {datetime.date.today()} (kernels at {commit})\n\n")
        f.write("Written by `scripts/sass-check.sh --out`: ptxas 12.9 cubins read with cuobjdump. Occupancy\n"
                "is computed from the register and shared-memory counts against sm_90's limits at\n"
                "the launch size shown; the loop columns count one pass of each kernel's hot loop\n"
                "(for gemm_mma_*, one 128 x 128 x 32 k-tile per warp). No GPU was used: any speed\n"
                "read from this table is a prediction.\n\n")
        f.write("\n".join(table) + "\n")
if errors:
    for e in errors:
        print("error: " + e, file=sys.stderr)
    print("SASS check FAILED", file=sys.stderr)
    sys.exit(1)
print(f"SASS check passed ({len(rows)} kernels, sm_90)")
EOF
