"""WinCLIP: sliding-window CLIP scoring on the shared encoder, KeAD's output type."""
