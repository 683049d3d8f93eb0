"""ToCoAD: two-stage contrastive anomaly detection (DNP + NCL + memory bank), pure torch.

Entry points: ``fit.fit_tocoad`` (train from normal images) and ``model.TocoadModel`` (score,
``to_state`` / ``from_state``). See /shared/docs/tocoad-spec.md for every design decision.
"""
