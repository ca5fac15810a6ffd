//! AdamW over unique slots, gradient clipping, learning-rate schedules.
