"""Object storage: the ``ObjectStore`` protocol, its S3 and local-folder adapters, artifacts."""
