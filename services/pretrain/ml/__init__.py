"""Pure-torch AGBP pretraining: losses, objectives, data pipeline, training loop, pseudo boxes.

Never imports transport or storage libraries; ``services.pretrain.service`` supplies data and
hooks.
"""
