"""Loss landscapes: planes, projection of checkpoints onto them, and loss-surface grids.

Li et al. 2018 ("Visualizing the loss landscape of neural nets") and Li et al. 2022 (FL
loss-landscape pilot study): every figure is a set of checkpoints projected onto a 2-D plane over
the loss surface ``L(centre + a d1 + b d2)``.
"""
