"""Celery transport of the anomaly_map service."""
