"""Detectors held loaded in the process: slots with their batchers, the runtime that follows,
swaps and evicts them, and its wiring from settings."""
