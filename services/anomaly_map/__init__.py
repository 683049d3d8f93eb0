"""The anomaly_map service."""
