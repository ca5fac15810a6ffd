// The emulator's device memory (memory.cpp): what the launch checks in
// runtime.cpp ask about allocations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace emu {

// printf into a std::string (runtime.cpp).
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Every byte of a red zone holds this (NaN as float, double and bf16).
constexpr unsigned char RED_ZONE_BYTE = 0xff;

struct Allocation {
    uintptr_t start;  // what the allocator returned
    size_t bytes;     // what was asked for
};

// The live allocation that contains `addr` (its end counts as inside: a
// pointer one past the last element is a valid argument).
bool find_allocation(uintptr_t addr, Allocation& out);

// Where `addr` lies: inside, in the red zone or guard page of an
// allocation, or near none. For fault reports.
std::string describe_address(uintptr_t addr);

// Checks that the red zones of the allocation starting at `start` still hold
// RED_ZONE_BYTE, refills them, and returns what changed ("" if nothing).
std::string check_red_zones(uintptr_t start);

}  // namespace emu
