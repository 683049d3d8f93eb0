"""Celery transport of the pretrain service."""
