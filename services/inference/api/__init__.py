"""HTTP transport of the inference service."""
