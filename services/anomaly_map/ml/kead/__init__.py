"""KeAD (agssp-spec §1): V-V CLIP features against defect-description prompts and a
few-shot memory bank."""
