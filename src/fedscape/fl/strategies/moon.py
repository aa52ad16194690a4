"""MOON (Li et al. 2021): a model-contrastive term pulls local representations to the global model's."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fedscape.core.seeds import derive_seed
from fedscape.fl.aggregate import sample_weights, weighted_mean
from fedscape.fl.strategies.base import ClientContext, ClientResult, ClientStore, Strategy, stacked_gradients
from fedscape.models.layers import ProjectedClassifier, has_forward_stacked
from fedscape.models.loss import stacked_mean_loss
from fedscape.models.params import FlatParams, flatten_buffers, flatten_params, load_buffers, load_params

_MOON_HEAD_STREAM = 0x4D4F4F4E  # seed stream of MOON's projection head


def moon_contrastive_loss(z: torch.Tensor, z_global: torch.Tensor, z_prev: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """MOON's model-contrastive loss (Li et al. 2021, eq. 3): -log e^{s_g/T} / (e^{s_g/T} + e^{s_p/T}),
    s = cosine similarity of the local representation to the global resp. previous local one."""
    pos = F.cosine_similarity(z, z_global, dim=-1)
    neg = F.cosine_similarity(z, z_prev, dim=-1)
    logits = torch.stack([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))


def stacked_moon_contrastive_loss(z: torch.Tensor, z_global: torch.Tensor, z_prev: torch.Tensor, temperature: float,
                                  mask: torch.Tensor) -> torch.Tensor:
    """`moon_contrastive_loss` of K stacked clients [K]: representations [K, B, D], each client's mean over its real
    rows (``mask`` [K, B], 0 for a padded row), 0 for a client without any."""
    pos = F.cosine_similarity(z, z_global, dim=-1)
    neg = F.cosine_similarity(z, z_prev, dim=-1)
    rows = -torch.log_softmax(torch.stack([pos, neg], dim=-1) / temperature, dim=-1)[..., 0]  # [K, B]
    mask = mask.to(rows.dtype)
    return (rows * mask).sum(1) / mask.sum(1).clamp_min(1)


class Moon(Strategy):
    """MOON (Li et al. 2021, Model-Contrastive Federated Learning) with a two-layer projection head.

    ``head: side``: the head (Linear(D, H)-ReLU-Linear(H, O) on the penultimate features) is trained and
    averaged with the model but kept by the strategy, so the model saved in trajectories is the plain
    classifier (the head only feeds the contrastive term). ``head: projection``: the classifier sits on the
    head's output, as in MOON's code and the FedAlign code; the head is then part of the model
    (`prepare_model`: `fedscape.models.layers.ProjectedClassifier`), trained by both terms, averaged,
    saved and evaluated with it. The previous local model of a client that has not yet trained is the
    initial global model. The FedAlign code's is not (methods/moon.py): its server's prev_models start as
    state_dict() views of the server model, which the first aggregation's load_state_dict overwrites in place before
    the server's test moves the model to the GPU, so from round 2 on such a client there gets the first round's
    aggregate.

    ``reference_mode: train`` (the default): the global and previous models compute their representations in the
    local model's mode: in training, a batch-norm model's with the batch's statistics, as in the FedAlign code (its
    copies are never put in eval mode). ``reference_mode: eval``: in eval mode, as MOON's own code does, each with
    its own running statistics: the global model with the round's global buffers, a client's previous model with
    the buffers its local model had at the end of that client's last local training (kept per client, `prev_buffers`,
    only in this mode), a client that has not yet trained with the initial global model's. The two modes differ for
    batch-norm models only.

    Vectorised (`local_gradients_vectorized`) with ``head: projection`` and ``reference_mode: train`` on a model whose
    features stack (the ResNets, `stacked_blocker`): each stacked client's representations against the global model's
    and its own previous model's on its batch, those from stacked passes at the global parameters and at the
    clients' previous parameters (`begin_stacked`), normalised with each client's batch statistics as the
    sequential references are.
    """

    standard_local_training = False
    vectorized = True  # where `stacked_blocker` finds nothing

    @property
    def eval_references(self) -> bool:
        """Whether the reference models compute in eval mode with their own buffers (``reference_mode: eval``)."""
        return self.config.reference_mode == "eval"

    @property
    def projection(self) -> bool:
        """Whether the classifier sits on the projection head (``head: projection``)."""
        return self.config.head == "projection"

    def prepare_model(self, model: nn.Module, seed: int = 0) -> nn.Module:
        """``head: projection``: `model` (taken over) with its classifier on a projection head drawn from the
        seed stream of the side head, so both placements start from the same head (a classifier of another input
        width than the model's, `projection_dim`, is drawn next from that stream); otherwise `model`."""
        if not self.projection:
            return model
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, _MOON_HEAD_STREAM))
            return ProjectedClassifier(model, self.config.projection_dim).to(device)

    def setup(self, num_clients, num_params, device, model=None, seed=0, client_sizes=None) -> None:
        super().setup(num_clients, num_params, device, model, seed, client_sizes)
        if model is None:
            raise ValueError("MOON needs the model at setup (its projection head is sized from it)")
        if self.projection:
            if not isinstance(model, ProjectedClassifier):
                raise ValueError("MOON with head projection trains the model of its prepare_model (the classifier "
                                 "on the projection head); got a plain model")
            self._global_model = copy.deepcopy(model).requires_grad_(False)
            self._prev_model = copy.deepcopy(model).requires_grad_(False)
            self.prev = ClientStore(num_params, flatten_params(model).cpu())
            self._setup_prev_buffers(model)
            return
        dim = model.classifier.in_features
        out = self.config.projection_dim or dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, _MOON_HEAD_STREAM))
            head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))
        self.head = head.to(device)
        self.head_flat = FlatParams(self.head)
        self.head_global = self.head_flat.get()
        self._global_model = copy.deepcopy(model).requires_grad_(False)
        self._prev_model = copy.deepcopy(model).requires_grad_(False)
        self._global_head = copy.deepcopy(self.head).requires_grad_(False)
        self._prev_head = copy.deepcopy(self.head).requires_grad_(False)
        self.prev = ClientStore(num_params, flatten_params(model).cpu())
        self.prev_heads = ClientStore(self.head_global.numel(), self.head_global.cpu())
        self._pending_heads: dict[int, torch.Tensor] = {}
        self._setup_prev_buffers(model)

    def _setup_prev_buffers(self, model: nn.Module) -> None:
        """reference_mode eval: each client's previous floating buffers, the initial model's for a client that has not
        yet trained (as its previous parameters are the initial model's); None in train mode, whose references
        normalise with the batch's statistics."""
        buffers = flatten_buffers(model).cpu()
        self.prev_buffers = ClientStore(buffers.numel(), buffers) if self.eval_references else None

    def state_dict(self):
        extra = {"prev_buffers": self.prev_buffers.state_dict()} if self.prev_buffers is not None else {}
        if self.projection:
            return {**super().state_dict(), "prev": self.prev.state_dict(), **extra}
        return {**super().state_dict(), "head_global": self.head_global, "prev": self.prev.state_dict(),
                "prev_heads": self.prev_heads.state_dict(), **extra}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.prev.load_state_dict(state["prev"])
        if self.prev_buffers is not None:
            self.prev_buffers.load_state_dict(state["prev_buffers"])
        if self.projection:
            return
        self.head_global = state["head_global"].to(self.device)
        self.prev_heads.load_state_dict(state["prev_heads"])

    def begin_local(self, model: nn.Module, ctx: ClientContext) -> None:
        device = ctx.global_params.device
        buffers = flatten_buffers(model)  # the round's global buffers: the engine has loaded the global model
        # train mode: both references take them (unread by batch norm in train mode); eval mode: the previous model
        # takes its client's own
        prev_buffers = buffers if self.prev_buffers is None else self.prev_buffers.get(ctx.client_id, device)
        for copy_, params, copy_buffers in ((self._global_model, ctx.global_params, buffers),
                                            (self._prev_model, self.prev.get(ctx.client_id, device), prev_buffers)):
            load_params(copy_, params)
            if copy_buffers.numel():
                load_buffers(copy_, copy_buffers)
            copy_.train(model.training and not self.eval_references)
        if self.projection:
            return
        load_params(self._global_head, self.head_global)
        load_params(self._prev_head, self.prev_heads.get(ctx.client_id, device))
        self._global_head.train(not self.eval_references)  # no batch norm in the head: the mode changes nothing
        self._prev_head.train(not self.eval_references)
        self.head_flat.set(self.head_global)
        self.head.train()

    def stacked_blocker(self, model: nn.Module, stacked_forward: bool = True, optimizer: str = "sgd") -> str | None:
        # The hyperparameters' `stacked_problem` says the same to planning, without torch.
        if not self.projection:
            return (f"algorithm {self.name!r} with head side trains a second model beside the stacked one (its side "
                    "head, averaged apart), which the stacked step does not carry")
        if self.eval_references:
            return (f"algorithm {self.name!r} with reference_mode eval normalises its references with per-client "
                    "running statistics, which the stacked step does not carry")
        if not (stacked_forward and has_forward_stacked(model)):
            name = type(getattr(model, "backbone", model)).__name__
            return (f"algorithm {self.name!r} compares each client's representations, which only the ResNets' own "
                    f"stacked features give ({name}{'' if stacked_forward else ' under vmap'})")
        return None

    def begin_stacked(self, client_ids: list[int], global_params: torch.Tensor) -> None:
        """The chunk's previous local models, stacked in its order, at addresses kept per chunk size (a captured step
        reads them)."""
        prev = torch.stack([self.prev.get(c, global_params.device) for c in client_ids]).to(global_params.dtype)
        self._prev_stack = self.stacked_rows("prev", prev)

    def end_stacked(self, results: list[ClientResult]) -> None:
        for r in results:
            self.prev.set(r.client_id, r.params)
        self._prev_stack = None  # the chunk's rows: freed with `release_stacked` unless a captured step reads them

    def local_gradients_vectorized(self, params: list[torch.Tensor], loss) -> tuple[torch.Tensor,
                                                                                    list[torch.Tensor | None]]:
        """`local_loss` of K stacked clients: CE of the classifier on z plus mu times the contrastive term of z against
        the global model's and each client's previous model's representations of its batch (the references without
        gradient, normalised with the batch's statistics and updating no running statistics)."""
        batch = loss.batch
        k, model = params[0].shape[0], batch.model

        def features(tensors: list[torch.Tensor], update: bool) -> torch.Tensor:
            return model.forward_features_stacked(dict(zip(batch.names, tensors, strict=True)), batch.x,
                                                  norm=batch.norm(update))

        z = features(params, True)  # the local pass first, as `local_loss`: it alone moves the running statistics
        ce = stacked_mean_loss(model.classify_stacked(dict(zip(batch.names, params, strict=True)), z), batch.y,
                               batch.mask)
        with torch.no_grad():
            z_global = features([g.expand(k, *g.shape) for g in batch.global_params], False)
            z_prev = features([p[:k] for p in self._prev_stack], False)
        con = stacked_moon_contrastive_loss(z, z_global, z_prev, self.config.temperature, batch.mask)
        losses = ce + self.config.mu * con
        return losses.detach(), stacked_gradients(losses, params)

    def local_parameters(self, ctx: ClientContext) -> list[torch.Tensor]:
        return [] if self.projection else list(self.head.parameters())

    def local_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        if self.projection:  # the model's features are the head's output z, and the classifier reads them
            z = model.forward_features(x)
            with torch.no_grad():
                z_global = self._global_model.forward_features(x)
                z_prev = self._prev_model.forward_features(x)
            con = moon_contrastive_loss(z, z_global, z_prev, self.config.temperature)
            return F.cross_entropy(model.classifier(z), y) + self.config.mu * con
        features = model.forward_features(x)
        ce = F.cross_entropy(model.classifier(features), y)
        with torch.no_grad():
            z_global = self._global_head(self._global_model.forward_features(x))
            z_prev = self._prev_head(self._prev_model.forward_features(x))
        con = moon_contrastive_loss(self.head(features), z_global, z_prev, self.config.temperature)
        return ce + self.config.mu * con

    def end_local(self, model: nn.Module, ctx: ClientContext, params: torch.Tensor) -> None:
        self.prev.set(ctx.client_id, params)
        if self.prev_buffers is not None:
            self.prev_buffers.set(ctx.client_id, flatten_buffers(model))
        if self.projection:
            return
        head = self.head_flat.get()
        self.prev_heads.set(ctx.client_id, head)
        self._pending_heads[ctx.client_id] = head

    def server_update(self, global_params: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        if self.projection:  # the head is part of the model: averaged with it
            return super().server_update(global_params, results)
        weights = sample_weights([r.num_samples for r in results])
        heads = torch.stack([self._pending_heads.pop(r.client_id) for r in results])
        self._pending_heads.clear()
        self.head_global = weighted_mean(heads, weights)
        return super().server_update(global_params, results)
