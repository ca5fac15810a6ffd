//! The training loop: episodes, agent steps, evaluation, checkpoints, metrics.
