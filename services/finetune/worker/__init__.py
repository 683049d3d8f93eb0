"""Celery transport of the finetune service."""
