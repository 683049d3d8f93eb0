"""Jobs: durable job records in the object store, the runner, and Celery plumbing (no torch)."""
