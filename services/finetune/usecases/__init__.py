"""Use cases of the finetune service: one module per job kind, shared steps in common."""
