"""Use cases of the pretrain service: one module per job kind."""
