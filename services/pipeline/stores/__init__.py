"""What the pipeline service keeps in the object store: pipeline records and reports."""
