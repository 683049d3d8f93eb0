"""Use cases of the finetune service (framework-free)."""
