//! GPT-2 over slots.
