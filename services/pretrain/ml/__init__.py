"""Pure-torch AGBP pretraining: losses, objectives, data pipeline, training loop, pseudo boxes.

Never imports transport or storage libraries; the use cases (``services.pretrain.usecases``)
supply data and hooks, and the worker hands them ``runner.AgbpTrainer`` / ``labeler.BoxLabeler``.
"""
