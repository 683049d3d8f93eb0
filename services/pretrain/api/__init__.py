"""HTTP transport of the pretrain service."""
