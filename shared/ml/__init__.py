"""Torch helpers shared by services. Never imports fastapi, celery, redis or minio."""
