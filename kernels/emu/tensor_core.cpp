// The tensor-core instructions under the emulator (the wrappers in kernels/include/common.cuh).
//
// mma.sync and ldmatrix are warp collectives (WARP_OP in runtime.cpp): every
// lane deposits a record with its operands, the last lane to arrive rebuilds
// the whole tiles from the 32 records per the PTX ISA fragment layouts,
// computes (in double, for mma), and writes each lane's part back into its
// record. A kernel that indexes a fragment wrongly therefore gets wrong
// numbers here, as it would on the GPU.
//
// cp.async is per thread: the source is read at issue into a private staging
// area and the destination is filled with NaN; cp_async_wait writes the data
// of the groups it retires. A kernel that reads a stage before waiting for it
// (or overwrites a stage others still read) sees NaN and fails its test,
// instead of passing by luck as it could on the GPU.
#include "tensor_core.h"

#include <atomic>
#include <cstdio>
#include <vector>

namespace emu {

namespace {

enum Op : int { MMA_BF16 = 1, LDMATRIX = 2 };

// One lane's operands and results. Lives on the lane's fiber stack for the
// duration of the collective.
struct Record {
    int op;
    // mma: acc is read and written; a, b are read.
    float* acc;
    const uint32_t* a;
    const uint32_t* b;
    // ldmatrix: matrices, .trans, this lane's row address, its registers.
    int count;
    bool trans;
    const void* row;
    uint32_t* regs;
};

thread_local char error_buf[256];

const char* error(const char* fmt, int x, int y = 0) {
    std::snprintf(error_buf, sizeof error_buf, fmt, x, y);
    return error_buf;
}

float lo_bf16(uint32_t v) { return bf16_value(bf16{(uint16_t)(v & 0xffffu)}); }
float hi_bf16(uint32_t v) { return bf16_value(bf16{(uint16_t)(v >> 16)}); }

// D = A B + C for the warp's 16 x 8 x 16 tile, from the fragments of all lanes.
void run_mma(Record* const r[32]) {
    double a[16][16], b[16][8], c[16][8];
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, t = l & 3;
        const uint32_t* fa = r[l]->a;
        const uint32_t* fb = r[l]->b;
        const float* fc = r[l]->acc;
        for (int half = 0; half < 2; half++) {  // k columns 2t.. and 2t+8..
            const int k = 2 * t + 8 * half;
            a[g][k] = lo_bf16(fa[2 * half]);
            a[g][k + 1] = hi_bf16(fa[2 * half]);
            a[g + 8][k] = lo_bf16(fa[2 * half + 1]);
            a[g + 8][k + 1] = hi_bf16(fa[2 * half + 1]);
            b[k][g] = lo_bf16(fb[half]);
            b[k + 1][g] = hi_bf16(fb[half]);
        }
        c[g][2 * t] = fc[0];
        c[g][2 * t + 1] = fc[1];
        c[g + 8][2 * t] = fc[2];
        c[g + 8][2 * t + 1] = fc[3];
    }
    double d[16][8];
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            double s = c[m][n];
            for (int k = 0; k < 16; k++) s += a[m][k] * b[k][n];
            d[m][n] = s;
        }
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, t = l & 3;
        float* fc = r[l]->acc;
        fc[0] = (float)d[g][2 * t];
        fc[1] = (float)d[g][2 * t + 1];
        fc[2] = (float)d[g + 8][2 * t];
        fc[3] = (float)d[g + 8][2 * t + 1];
    }
}

// Bank conflicts of ldmatrix, which the emulator can see and a test cannot
// time: shared memory has 32 banks of 4 bytes, so a 16-byte row covers one of
// 8 groups of 4 banks, (address / 16) % 8. The 8 rows of one matrix are one
// access when they fall into 8 different groups (equal addresses broadcast);
// otherwise the hardware needs one more pass per extra row in a group.
std::atomic<unsigned long long> ldmatrix_matrices{0}, ldmatrix_extra_passes{0};

unsigned extra_passes(Record* const r[32], int j) {
    uintptr_t rows[8];
    int n = 0, per_group[8] = {};
    for (int row = 0; row < 8; row++) {
        uintptr_t a = reinterpret_cast<uintptr_t>(r[8 * j + row]->row);
        bool seen = false;
        for (int i = 0; i < n; i++) seen |= rows[i] == a;
        if (seen) continue;
        rows[n++] = a;
        per_group[(a / 16) % 8]++;
    }
    int passes = 0;
    for (int c : per_group) passes = c > passes ? c : passes;
    return (unsigned)(passes - 1);
}

// ldmatrix: lanes 8j..8j+7 give the rows of matrix j (16 bytes each).
const char* run_ldmatrix(Record* const r[32]) {
    const int count = r[0]->count;
    const bool trans = r[0]->trans;
    uint16_t m[4][8][8];
    for (int j = 0; j < count; j++)
        for (int row = 0; row < 8; row++) {
            const void* p = r[8 * j + row]->row;
            if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
                return error("ldmatrix: lane %d gives a row address that is not 16-byte aligned", 8 * j + row);
            std::memcpy(m[j][row], p, 16);
        }
    unsigned extra = 0;
    for (int j = 0; j < count; j++) extra += extra_passes(r, j);
    ldmatrix_matrices.fetch_add((unsigned long long)count, std::memory_order_relaxed);
    ldmatrix_extra_passes.fetch_add(extra, std::memory_order_relaxed);
    for (int l = 0; l < 32; l++) {
        for (int j = 0; j < count; j++) {
            uint16_t lo, hi;
            if (trans) {
                lo = m[j][2 * (l % 4)][l / 4];
                hi = m[j][2 * (l % 4) + 1][l / 4];
            } else {
                lo = m[j][l / 4][2 * (l % 4)];
                hi = m[j][l / 4][2 * (l % 4) + 1];
            }
            r[l]->regs[j] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
    }
    return nullptr;
}

void warp_op(Record& rec) { warp_collective(WARP_OP, 0xffffffffu, reinterpret_cast<uint64_t>(&rec), rec.op, 32); }

// ---- cp.async ----

struct PendingCopy {
    unsigned char* dst;
    unsigned group;
    unsigned char data[16];
};
struct ThreadCopies {
    std::vector<PendingCopy> pending;
    unsigned committed = 0;  // groups committed so far; open copies carry this number
};
// Per thread of the block running on this worker.
thread_local std::vector<ThreadCopies> tls_copies;

ThreadCopies& my_copies() {
    const Coords& c = tls_coords;
    unsigned linear = c.thread.x + c.block_dim.x * (c.thread.y + c.block_dim.y * c.thread.z);
    return tls_copies[linear];
}

}  // namespace

const char* warp_op_run(void* const records[32], unsigned mask) {
    Record* r[32];
    for (int l = 0; l < 32; l++) r[l] = static_cast<Record*>(records[l]);
    if (mask != 0xffffffffu) return error("a tensor-core instruction needs all 32 lanes (mask 0x%08x)", (int)mask);
    for (int l = 1; l < 32; l++) {
        if (r[l]->op != r[0]->op || (r[0]->op == LDMATRIX && (r[l]->count != r[0]->count || r[l]->trans != r[0]->trans)))
            return error("lanes 0 and %d of a warp are in different tensor-core instructions (mma vs ldmatrix, "
                         "or ldmatrix shapes)",
                         l);
    }
    if (r[0]->op == MMA_BF16) {
        run_mma(r);
        return nullptr;
    }
    return run_ldmatrix(r);
}

void mma_m16n8k16_bf16_f32(float acc[4], const uint32_t a[4], const uint32_t b[2]) {
    Record rec{};
    rec.op = MMA_BF16;
    rec.acc = acc;
    rec.a = a;
    rec.b = b;
    warp_op(rec);
}

void ldmatrix(uint32_t* regs, int count, bool trans, const void* row) {
    Record rec{};
    rec.op = LDMATRIX;
    rec.count = count;
    rec.trans = trans;
    rec.row = row;
    rec.regs = regs;
    warp_op(rec);
}

void tensor_core_block_start(unsigned threads) {
    if (tls_copies.size() < threads) tls_copies.resize(threads);
    for (unsigned i = 0; i < threads; i++) {
        tls_copies[i].pending.clear();
        tls_copies[i].committed = 0;
    }
}

void cp_async(void* dst, const void* src, int src_bytes) {
    if (src_bytes < 0 || src_bytes > 16) kernel_fail("cp.async: src-size must be 0..16 bytes");
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0)
        kernel_fail("cp.async: the shared-memory destination is not 16-byte aligned");
    if (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % 16 != 0)
        kernel_fail("cp.async: the global source is not 16-byte aligned");
    ThreadCopies& t = my_copies();
    PendingCopy copy;
    copy.dst = static_cast<unsigned char*>(dst);
    copy.group = t.committed;
    std::memset(copy.data, 0, 16);
    std::memcpy(copy.data, src, (size_t)src_bytes);
    t.pending.push_back(copy);
    std::memset(dst, 0xff, 16);  // NaN as bf16 and as fp32 until the wait
}

void cp_async_commit() { my_copies().committed++; }

void cp_async_wait(int groups_left) {
    ThreadCopies& t = my_copies();
    // Retire every copy of a committed group older than the newest `groups_left`;
    // copies not yet committed stay in flight, as in PTX.
    size_t kept = 0;
    for (size_t i = 0; i < t.pending.size(); i++) {
        PendingCopy& c = t.pending[i];
        if (c.group + (unsigned)groups_left < t.committed) {
            std::memcpy(c.dst, c.data, 16);
        } else {
            t.pending[kept++] = c;
        }
    }
    t.pending.resize(kept);
}

}  // namespace emu

// For tests: matrices ldmatrix has loaded and the extra passes bank conflicts
// cost them, since the process started (all launches, all threads).
extern "C" void emu_ldmatrix_counters(unsigned long long out[2]) {
    out[0] = emu::ldmatrix_matrices.load();
    out[1] = emu::ldmatrix_extra_passes.load();
}
