//! Devices: raw memory, copies and kernel launches (CUDA and the CPU emulator).
