"""Use cases of the anomaly_map service, one module per job kind plus categories and maps.

Framework-free: the API and the worker call these; they call the runtime and the stores.
"""
