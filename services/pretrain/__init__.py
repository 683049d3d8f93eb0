"""The pretrain service."""
