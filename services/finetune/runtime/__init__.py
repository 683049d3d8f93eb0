"""The torch side of the finetune jobs: one DetectorBackend per detector family and the
start weights they load; only the worker and the CLI import it."""
