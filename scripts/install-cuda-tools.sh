#!/usr/bin/env bash
# Installs what build.rs, scripts/ptxas-check.sh and scripts/sass-check.sh
# need to compile and read the CUDA kernels without a CUDA toolkit: NVRTC, the
# CUDA headers, ptxas, cuobjdump and nvdisasm, from NVIDIA's pip wheels, into
# .cuda-tools/ (git-ignored). Idempotent: a second
# run only checks that the files are there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.cuda-tools
# One CUDA 12 minor for all three wheels, so NVRTC and ptxas agree on the PTX ISA.
CUDA_MINOR="${CUDA_MINOR:-12.9}"
PACKAGES=(
    "nvidia-cuda-nvrtc-cu12==${CUDA_MINOR}.*"
    "nvidia-cuda-runtime-cu12==${CUDA_MINOR}.*"
    "nvidia-cuda-nvcc-cu12==${CUDA_MINOR}.*"
    # The disassemblers only read cubins; PyPI has them from CUDA 13.2 on
    # (no 12.x wheels), and they read ptxas 12.9's sm_80/sm_90 cubins.
    "nvidia-cuda-cuobjdump==${SASS_TOOLS_VERSION:-13.4.92}"
    "nvidia-cuda-nvdisasm==${SASS_TOOLS_VERSION:-13.4.92}"
)

have_all() {
    compgen -G "$DEST/nvidia/cuda_nvrtc/lib/libnvrtc.so*" >/dev/null &&
        [ -f "$DEST/nvidia/cuda_runtime/include/cuda_runtime.h" ] &&
        [ -x "$DEST/nvidia/cuda_nvcc/bin/ptxas" ] &&
        [ -x "$DEST/nvidia/cu13/bin/cuobjdump" ] &&
        [ -x "$DEST/nvidia/cu13/bin/nvdisasm" ]
}

if have_all; then
    echo "CUDA tools already in $DEST"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "error: $PYTHON -m pip is not available; install pip or set PYTHON" >&2
    exit 1
fi
"$PYTHON" -m pip install --quiet --root-user-action=ignore --disable-pip-version-check --no-deps --upgrade --target "$DEST" "${PACKAGES[@]}"
chmod +x "$DEST"/nvidia/cuda_nvcc/bin/* "$DEST"/nvidia/cu13/bin/* 2>/dev/null || true

if ! have_all; then
    echo "error: pip finished but NVRTC, cuda_runtime.h, ptxas, cuobjdump or nvdisasm is missing under $DEST" >&2
    exit 1
fi
# build.rs looked for NVRTC when it last ran; make the next cargo build look again.
touch build.rs
# build.rs cannot watch a folder that did not exist when it last ran; touch it
# so the next cargo build looks for NVRTC again.
touch build.rs
echo "CUDA tools installed in $DEST (NVRTC, headers, ptxas $CUDA_MINOR; cuobjdump, nvdisasm)"
