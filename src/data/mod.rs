//! Tokenizers, dataset preparation, memory-mapped token files, batches.
