//! The tape: ops record what their backward needs; `backward` runs it in reverse.
