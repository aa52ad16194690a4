"""SCAFFOLD: control variates correct client drift (Karimireddy et al. 2020)."""

from __future__ import annotations

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig

SPECS = (AlgorithmSpec("scaffold", ServerSGDConfig, "scaffold:Scaffold", "SCAFFOLD",
                  "Karimireddy et al. 2020, SCAFFOLD: Stochastic Controlled Averaging for Federated Learning"),)
