"""How many model-sized vectors a run keeps for each of its clients between rounds, torch-free: the host memory of its
train job (`fedscape.plan.resources.train_mem_mb`) counts them, and they are read here, not from the strategies,
because planning does not import torch.

A strategy keeps such a vector per client in a `ClientStore` on the CPU (`fedscape.fl.strategies.base`): SCAFFOLD its
control variate c_i, FedDyn its gradient correction g_k, MOON its previous local model with its head (and with
`reference_mode: eval` its buffers); a sequential trainer with `training.keep_optimizer_state` keeps each client's
optimiser state (SGD's momentum buffer; AdamW's two moments and a step count per tensor). Every client that took part
keeps its vectors to the end of the run, and each round's state.pt stacks them into one more copy
(`ClientStore.state_dict`). tests/unit/test_job_memory.py trains every algorithm and keeps this in step with what the
state.pt of its run holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedscape.fl.hparams.registry import algorithm_config

# What `training.keep_optimizer_state` keeps per client, by `training.optimizer`: SGD's momentum buffer (zeros without
# momentum: it is kept all the same), AdamW's exp_avg and exp_avg_sq (its per-tensor step counts are a few numbers).
OPTIMIZER_CLIENT_STATE: dict[str, int] = {"sgd": 1, "adamw": 2}


def client_state_models(algorithm: str, hyperparameters: Mapping[str, Any] | None, training: Mapping[str, Any]) -> int:
    """How many model-sized vectors a run of `algorithm` (a spec name) with `hyperparameters` (its `algorithms`
    entry's, defaults left out) and its resolved `training` settings (schema-filled: its `optimizer` set) keeps for
    each client between rounds: its strategy's (as its hyperparameters declare it: `client_state_models`, in the
    vectors of its init model's size that the train job's memory counts) and, with `keep_optimizer_state`, its
    optimiser's (`OPTIMIZER_CLIENT_STATE`)."""
    kept = algorithm_config(algorithm, dict(hyperparameters or {})).client_state_models()
    if training.get("keep_optimizer_state"):
        kept += OPTIMIZER_CLIENT_STATE[training["optimizer"]]
    return kept
