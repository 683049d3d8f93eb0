"""Use cases of the inference service (framework-free)."""
