// Token + position (+ token-type) embeddings, forward and backward.
//
// Token ids are validated by the data layer, not here (checking them on the
// host would mean copying them back every step). A kernel cannot return an
// error, so an id >= vocab makes its output row NaN in the forward, which
// shows up in the loss, and is skipped in the backward, instead of reading or
// writing outside `wte`.
#include "dtype.cuh"
#include "grid.cuh"

// out[row, :] = wte[tokens[row], :] + wpe[row % seq, :] (+ token_type[:], BERT's
// type-0 row, when not null). One warp per row, lanes across the channels:
// each load and store is 32 consecutive elements, the token id is read once
// per lane, and there is no 64-bit division per element as a flat
// grid-stride loop over rows * channels would need.
template <typename T>
__device__ void embedding_fwd(T* __restrict__ out, const u32* __restrict__ tokens, const T* __restrict__ wte,
                              const T* __restrict__ wpe, const T* __restrict__ token_type, u32 rows, u32 seq,
                              u32 channels, u32 vocab) {
    const u32 lane = lane_id();
    const u64 row = warp_row();
    if (row >= rows) return;
    const u32 tok = tokens[row];
    T* y = out + row * channels;
    if (tok >= vocab) {
        for (u32 c = lane; c < channels; c += 32) y[c] = from_f32<T>(NAN);
        return;
    }
    const T* e = wte + (u64)tok * channels;
    const T* p = wpe + (u64)(row % seq) * channels;
    for (u32 c = lane; c < channels; c += 32) {
        float v = to_f32(e[c]) + to_f32(p[c]);
        if (token_type) v += to_f32(token_type[c]);
        y[c] = from_f32<T>(v);
    }
}

// dwpe[t, c] += sum over the batch of dout[b, t, c]; dwte[tokens[b, t], c] += dout[b, t, c].
// One thread per (t, c), looping over the batch: the position gradient is
// then a private sum with one plain store (deterministic, no atomics), and
// consecutive threads touch consecutive columns. Token rows collide whenever
// a token repeats anywhere in the batch, so the token gradient uses
// atomicAdd. The deterministic alternative (sort the positions by token id,
// then let one thread own each (token, column)) needs a sort and a scratch
// buffer per step; float atomics to distinct addresses are cheap on L2, and
// collisions are rare outside frequent tokens. This makes it the one
// kernel of a training step whose bits depend on the order blocks (and,
// within a block, threads) run in.
// The token-type row's gradient (when not null) is the sum of every row:
// each thread adds its position's batch sum with one atomicAdd, seq of them
// per column.
// The gradients are fp32 whatever the activations' type T: token rows are
// summed with float atomics.
template <typename T>
__device__ void embedding_bwd(float* dwte, float* __restrict__ dwpe, float* dtoken_type, const T* __restrict__ dout,
                              const u32* __restrict__ tokens, u32 batch, u32 seq, u32 channels, u32 vocab) {
    const u32 n = seq * channels;  // checked on the host to fit in 32 bits
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const u32 t = i / channels, c = i - t * channels;
        float acc = 0.0f;
        for (u32 b = 0; b < batch; b++) {
            const u64 row = (u64)b * seq + t;
            const float g = to_f32(dout[row * channels + c]);
            acc += g;
            const u32 tok = tokens[row];
            if (tok < vocab) atomicAdd(&dwte[(u64)tok * channels + c], g);
        }
        dwpe[i] += acc;
        if (dtoken_type) atomicAdd(&dtoken_type[c], acc);
    }
}

extern "C" __global__ void embedding_fwd_f32(float* __restrict__ out, const u32* __restrict__ tokens,
                                             const float* __restrict__ wte, const float* __restrict__ wpe,
                                             const float* __restrict__ token_type, u32 rows, u32 seq,
                                             u32 channels, u32 vocab) {
    embedding_fwd(out, tokens, wte, wpe, token_type, rows, seq, channels, vocab);
}

extern "C" __global__ void embedding_bwd_f32(float* dwte, float* __restrict__ dwpe, float* dtoken_type,
                                             const float* __restrict__ dout, const u32* __restrict__ tokens,
                                             u32 batch, u32 seq, u32 channels, u32 vocab) {
    embedding_bwd(dwte, dwpe, dtoken_type, dout, tokens, batch, seq, channels, vocab);
}

// Mixed precision: bf16 embeddings (the weights' compute copies) and
// activations; the gradients stay fp32.
extern "C" __global__ void embedding_fwd_bf16(bf16* __restrict__ out, const u32* __restrict__ tokens,
                                              const bf16* __restrict__ wte, const bf16* __restrict__ wpe,
                                              const bf16* __restrict__ token_type, u32 rows, u32 seq,
                                              u32 channels, u32 vocab) {
    embedding_fwd(out, tokens, wte, wpe, token_type, rows, seq, channels, vocab);
}

extern "C" __global__ void embedding_bwd_bf16(float* dwte, float* __restrict__ dwpe, float* dtoken_type,
                                              const bf16* __restrict__ dout, const u32* __restrict__ tokens,
                                              u32 batch, u32 seq, u32 channels, u32 vocab) {
    embedding_bwd(dwte, dwpe, dtoken_type, dout, tokens, batch, seq, channels, vocab);
}
