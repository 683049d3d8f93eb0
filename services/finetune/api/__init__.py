"""HTTP transport of the finetune service."""
