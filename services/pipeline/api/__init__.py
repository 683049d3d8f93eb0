"""HTTP transport of the pipeline service."""
