"""CORA's iterative training (Algorithm 1): :func:`ray_cora.iterate.loop.iterate` composes the
train-mdpr, embed, retrieve, train-mgen, evaluate and generate jobs round after round, and
:mod:`ray_cora.iterate.mining` holds the pure mining and labelling rules."""
