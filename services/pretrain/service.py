"""Use cases of the pretrain service (framework-free)."""
