"""Use cases of the anomaly_map service (framework-free)."""
