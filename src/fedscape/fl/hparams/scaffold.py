"""SCAFFOLD: control variates correct client drift (Karimireddy et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig


@dataclass(frozen=True)
class ScaffoldConfig(ServerSGDConfig):
    """SCAFFOLD hyperparameters: those of the server step."""

    def client_state_models(self) -> int:
        return 1  # its control variate c_i

    def result_bumps(self, model: str, model_options: dict, training: dict) -> int:
        # 1: the server control variate weights each client's change by its share of the samples (it was 1/N beside
        # sample-weighted model steps: fedscape.fl.strategies.scaffold)
        return 1


SPECS = (AlgorithmSpec("scaffold", ScaffoldConfig, "scaffold:Scaffold", "SCAFFOLD",
                  "Karimireddy et al. 2020, SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
                  fresh_optimizer="its option-II control variate divides the round's update x - y_i by the weight "
                                  "of the round's own gradients (Karimireddy et al. 2020, eq. 4), which a "
                                  "carried-over momentum or Adam state adds to",
                  sgd_only="its option-II control variate (x - y_i) over the weight of the round's gradients is "
                           "the clients' mean gradient only when each local step is a known multiple of gradients "
                           "(SGD, momentum included); with adamw's normalised steps it is the mean Adam direction "
                           "(about 100x a gradient in a measured case), which the correction adds to raw gradients"),)
