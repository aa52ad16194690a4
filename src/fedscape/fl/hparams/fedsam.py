"""FedSAM and FedASAM: sharpness-aware minimisation as the clients' optimiser (Qu et al. 2022; Caldarola et al.
2022), plain (Foret et al. 2021) or adaptive (Kwon et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from fedscape.core.names import unknown_name_error
from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig, refuse_out_of_range

AdaptiveTensors = Literal["all", "weights"]
ADAPTIVE_TENSORS = get_args(AdaptiveTensors)


@dataclass(frozen=True)
class FedSAMConfig(ServerSGDConfig):
    """FedSAM hyperparameters."""

    # The radius of the ascent step. 0.05 is SAM's CIFAR setting (Foret et al. 2021, Sec. 3.1); the FL papers
    # tune it per dataset (Caldarola et al. 2022 search {0.01, 0.02, 0.05, 0.1, 0.2}): our choice.
    rho: float = 0.05

    def __post_init__(self):
        super().__post_init__()
        refuse_out_of_range(self, rho=(self.rho < 0, "non-negative"))


@dataclass(frozen=True)
class FedASAMConfig(FedSAMConfig):
    """FedASAM hyperparameters."""

    rho: float = 0.5  # ASAM's CIFAR setting (Kwon et al. 2021, Sec. 5): the adaptive radius is scale-free, so larger
    eta: float = 0.01  # ASAM's CIFAR setting (Kwon et al. 2021): T = |w| + eta keeps zero weights perturbable
    # Which parameter tensors take the adaptive scale T = |w| + eta; the others take T = 1, SAM's. "all": every one,
    # biases and normalisation parameters too, as ASAM's eq. 10 writes it (Kwon et al. 2021), the default so that no
    # earlier run changes. "weights": those whose parameter name contains "weight", as ASAM's code tests names
    # (github.com/SamsungLabs/ASAM asam.py, ASAM.ascent_step: `if 'weight' in n`) and FedASAM's copy of it
    # (Caldarola et al. 2022, github.com/debcaldarola/fedsam models/clients/minimizers.py); a normalisation layer's
    # scale is named weight and takes T there too, its shift (bias) does not.
    adaptive_tensors: AdaptiveTensors = "all"

    def __post_init__(self):
        super().__post_init__()
        refuse_out_of_range(self, eta=(self.eta < 0, "non-negative"))
        if self.adaptive_tensors not in ADAPTIVE_TENSORS:
            raise unknown_name_error("adaptive_tensors value", self.adaptive_tensors, ADAPTIVE_TENSORS)


SPECS = (
    AlgorithmSpec("fedsam", FedSAMConfig, "fedsam:FedSAM", "FedSAM",
                  "Qu et al. 2022, Generalized Federated Learning via Sharpness Aware Minimization (ICML); "
                  "Caldarola et al. 2022 (ECCV)"),
    AlgorithmSpec("fedasam", FedASAMConfig, "fedsam:FedASAM", "FedASAM",
                  "Caldarola et al. 2022, Improving Generalization in Federated Learning by Seeking Flat Minima "
                  "(ECCV); ASAM: Kwon et al. 2021 (ICML)"),
)
