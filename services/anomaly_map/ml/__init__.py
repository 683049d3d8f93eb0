"""Pure-torch anomaly-map models (KeAD, WinCLIP) on a stock open_clip backbone."""
