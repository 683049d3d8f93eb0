"""Cross-process contracts: pydantic only, no torch."""
