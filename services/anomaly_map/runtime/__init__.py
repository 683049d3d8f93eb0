"""Models held loaded in an anomaly_map process: the CLIP scorers, the engine, the methods."""
