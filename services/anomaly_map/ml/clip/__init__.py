"""CLIP plumbing shared by the CLIP methods (KeAD, WinCLIP): local weights, the stock
encoder with its V-V stream, prompts and text features, preprocessing, tiling, score maths."""
