"""Use cases of the inference service: detect objects in an image, deliver results to sinks."""
