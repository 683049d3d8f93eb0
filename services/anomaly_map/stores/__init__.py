"""What the anomaly_map service keeps in the object store: categories, ToCoAD models, maps."""
