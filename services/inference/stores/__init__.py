"""What the inference service reads from the object store: published detector versions."""
