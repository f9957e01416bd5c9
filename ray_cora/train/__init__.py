"""Training on Ray Train: the mDPR bi-encoder (:mod:`.mdpr`) and the mGEN generator (:mod:`.mgen`).

The pure pieces (record readers in :mod:`.data`, the DPR loss, input formatting, optimizer and
schedule in :mod:`.loop`) import neither Ray nor a model; :func:`ray_cora.train.loop.fit` is the
one place that starts a ``TorchTrainer``.
"""
