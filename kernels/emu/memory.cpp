// The emulator's device memory: every allocation on pages of its own, so that
// a kernel's out-of-bounds accesses are seen instead of silently landing in
// some other buffer.
//
//   guard page | head red zone | allocation (256-aligned) | tail red zone | guard page
//              '-------------- whole pages, read/write ---------------'
//
// The allocation ends as close to the trailing guard page as 256-byte
// alignment (what cudaMalloc guarantees) allows: the tail red zone is the
// rounding to 256 bytes, under 256 bytes. The head red zone fills the first
// page up to the allocation (under a page). Both red zones hold
// RED_ZONE_BYTE. What is caught:
// - any read or write that reaches a guard page (past the tail red zone, or
//   before the head red zone), at the instruction, naming the block and
//   thread (runtime.cpp turns the fault into a launch error);
// - writes into a red zone, found after the launch by check_red_zones for
//   every allocation passed to the kernel (naming kernel and allocation);
// - pointer arguments outside every live allocation, before the launch.
// What is not: reads inside a red zone (they see NaN bytes, which usually
// poisons the result a test compares), writes of exactly RED_ZONE_BYTE
// bytes, accesses that jump over the guard pages into other memory, and
// overruns between views of one allocation (the model's arenas).
// Cost: an mmap per allocation, at least one page of memory and two memory
// mappings each (Linux allows about 65 k mappings): fine for the emulator,
// whose users hold few, mostly large buffers.
#include "memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <vector>

namespace emu {

namespace {

struct Mapping {
    uintptr_t map;      // the first guard page
    size_t map_bytes;   // both guard pages included
    uintptr_t data_lo;  // first read/write byte (the head red zone starts here)
    uintptr_t data_hi;  // one past the last read/write byte (the tail red zone ends here)
    size_t bytes;       // asked for
};

constexpr size_t ALIGN = 256;

size_t page() {
    static const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return pg;
}

std::mutex registry_mutex;
// Keyed by allocation start.
std::map<uintptr_t, Mapping>& registry() {
    static auto* r = new std::map<uintptr_t, Mapping>();  // never destroyed: pool threads may outlive statics
    return *r;
}

// The mapping whose pages (guard pages included) contain addr, if any: the
// allocation at or below addr, or the one above (addr may lie in its head
// red zone or guard page). Caller holds the mutex.
const Mapping* mapping_near(uintptr_t addr, uintptr_t* start) {
    auto& r = registry();
    auto above = r.upper_bound(addr);
    if (above != r.begin()) {
        auto below = std::prev(above);
        if (addr < below->second.map + below->second.map_bytes) {
            *start = below->first;
            return &below->second;
        }
    }
    if (above != r.end() && addr >= above->second.map) {
        *start = above->first;
        return &above->second;
    }
    return nullptr;
}

// First and last addresses in [lo, hi) whose byte is not RED_ZONE_BYTE;
// false if none. A red zone is under a page: one memcmp in the usual case.
bool dirty_range(uintptr_t lo, uintptr_t hi, uintptr_t* first, uintptr_t* last) {
    static const std::vector<unsigned char> clean(page(), RED_ZONE_BYTE);
    const unsigned char* p = reinterpret_cast<const unsigned char*>(lo);
    size_t n = hi - lo;
    if (std::memcmp(p, clean.data(), n) == 0) return false;
    size_t i = 0;
    while (i < n && p[i] == RED_ZONE_BYTE) i++;
    if (i == n) return false;
    size_t j = n;
    while (p[j - 1] == RED_ZONE_BYTE) j--;
    *first = lo + i;
    *last = lo + j - 1;
    return true;
}

}  // namespace

bool find_allocation(uintptr_t addr, Allocation& out) {
    std::lock_guard<std::mutex> g(registry_mutex);
    auto& r = registry();
    auto it = r.upper_bound(addr);
    if (it == r.begin()) return false;
    --it;
    if (addr > it->first + it->second.bytes) return false;
    out = {it->first, it->second.bytes};
    return true;
}

std::string describe_address(uintptr_t addr) {
    std::lock_guard<std::mutex> g(registry_mutex);
    uintptr_t start = 0;
    const Mapping* m = mapping_near(addr, &start);
    if (!m)
        return "not in or next to any live emulator allocation (a null, freed or wild pointer, or an index far out "
               "of bounds)";
    const uintptr_t end = start + m->bytes;
    const char* zone = addr < m->data_lo || addr >= m->data_hi ? "guard page" : "red zone";
    if (addr >= end)
        return format("%lu bytes past the end of the allocation at 0x%lx (%zu bytes), in its %s",
                      (unsigned long)(addr - end), (unsigned long)start, m->bytes, zone);
    if (addr < start)
        return format("%lu bytes before the start of the allocation at 0x%lx (%zu bytes), in its %s",
                      (unsigned long)(start - addr), (unsigned long)start, m->bytes, zone);
    return format("inside the allocation at 0x%lx (%zu bytes), at offset %lu", (unsigned long)start, m->bytes,
                  (unsigned long)(addr - start));
}

std::string check_red_zones(uintptr_t start) {
    std::lock_guard<std::mutex> g(registry_mutex);
    auto& r = registry();
    auto it = r.find(start);
    if (it == r.end()) return "";
    const Mapping& m = it->second;
    uintptr_t end = start + m.bytes;
    std::string report;
    uintptr_t first, last;
    if (dirty_range(m.data_lo, start, &first, &last)) {
        report += format("its head red zone was written, at offsets -%lu to -%lu from its start",
                         (unsigned long)(start - first), (unsigned long)(start - last));
        std::memset(reinterpret_cast<void*>(m.data_lo), RED_ZONE_BYTE, start - m.data_lo);
    }
    if (dirty_range(end, m.data_hi, &first, &last)) {
        if (!report.empty()) report += "; ";
        report += format("its tail red zone was written, at offsets +%lu to +%lu from its end",
                         (unsigned long)(first - end), (unsigned long)(last - end));
        std::memset(reinterpret_cast<void*>(end), RED_ZONE_BYTE, m.data_hi - end);
    }
    return report;
}

}  // namespace emu

// ---- C interface for Rust (src/cuda/emu.rs: EmuMemory) ------------------------

extern "C" {

// Zero-filled, 256-byte aligned; 0 when the system is out of memory.
uint64_t emu_alloc(size_t bytes) {
    using namespace emu;
    const size_t pg = page();
    const size_t rounded = (std::max<size_t>(bytes, 1) + ALIGN - 1) / ALIGN * ALIGN;
    const size_t data = (rounded + pg - 1) / pg * pg;
    const size_t total = data + 2 * pg;
    void* mem = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) return 0;
    const uintptr_t map = reinterpret_cast<uintptr_t>(mem);
    if (mprotect(reinterpret_cast<void*>(map + pg), data, PROT_READ | PROT_WRITE) != 0) {
        munmap(mem, total);
        return 0;
    }
    Mapping m{map, total, map + pg, map + pg + data, bytes};
    const uintptr_t start = m.data_hi - rounded;
    std::memset(reinterpret_cast<void*>(m.data_lo), RED_ZONE_BYTE, start - m.data_lo);
    std::memset(reinterpret_cast<void*>(start + bytes), RED_ZONE_BYTE, m.data_hi - (start + bytes));
    std::lock_guard<std::mutex> g(registry_mutex);
    registry()[start] = m;
    return start;
}

void emu_free(uint64_t addr) {
    using namespace emu;
    Mapping m;
    {
        std::lock_guard<std::mutex> g(registry_mutex);
        auto it = registry().find(addr);
        if (it == registry().end()) {
            std::fprintf(stderr, "emulator: free of 0x%lx, which is not a live allocation (ignored)\n",
                         (unsigned long)addr);
            return;
        }
        m = it->second;
        registry().erase(it);
    }
    munmap(reinterpret_cast<void*>(m.map), m.map_bytes);
}

// 0 when [addr, addr + bytes) lies inside one live allocation; otherwise 1
// and what is wrong in `err`. For the device's copies and memsets.
int emu_check_range(uint64_t addr, size_t bytes, char* err, size_t err_len) {
    emu::Allocation a;
    if (emu::find_allocation(addr, a) && addr + bytes <= a.start + a.bytes) return 0;
    if (err_len) {
        if (emu::find_allocation(addr, a))
            std::snprintf(err, err_len,
                          "%zu bytes at 0x%lx run %zu bytes past the end of the allocation at 0x%lx (%zu bytes)",
                          bytes, (unsigned long)addr, (size_t)(addr + bytes - a.start - a.bytes),
                          (unsigned long)a.start, a.bytes);
        else
            std::snprintf(err, err_len, "%zu bytes at 0x%lx: %s", bytes, (unsigned long)addr,
                          emu::describe_address(addr).c_str());
    }
    return 1;
}
}
