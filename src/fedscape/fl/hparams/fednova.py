"""FedNova: normalised averaging of client updates that took unequal local work (Wang et al. 2020)."""

from __future__ import annotations

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig

# No hyperparameters of its own: the normalisers come from each client's local steps, lrs and momentum, and
# the server step is ServerSGDConfig's (lr 1, no momentum: the paper's FedNova; its global momentum variant
# is server_momentum > 0).
SPECS = (AlgorithmSpec("fednova", ServerSGDConfig, "fednova:FedNova", "FedNova",
                  "Wang et al. 2020, Tackling the Objective Inconsistency Problem in Heterogeneous Federated "
                  "Optimization (NeurIPS)",
                  fresh_optimizer="its normalisers ||a_i||_1 count each round's local steps from zero momentum "
                                  "(Wang et al. 2020, eq. 6), which a carried-over momentum buffer breaks"),)
