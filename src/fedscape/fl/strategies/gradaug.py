"""GradAug (Yang et al. 2020) as local training, a baseline of the FedAlign paper."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedscape.fl.strategies.base import ClientContext, Strategy, slimmed_stack_blocker, stacked_gradients
from fedscape.models.loss import at_least_float32, stacked_mean_loss
from fedscape.models.resnets import Bottleneck


def gradaug_draws(config: Any, generator: torch.Generator) -> list[tuple[float, int]]:
    """A step's sub-networks as (width, index into ``config.scales``), largest width first: the smallest width and
    n - 1 widths drawn uniformly from [min_width, 1], then one scale per sub-network, from the client's generator.
    One home for the order both training paths draw in."""
    c = config
    # float32 under any default dtype: the widest draw is then the one `GradAugConfig.draws_full_width` checks
    draws = torch.rand(c.num_subnets - 1, generator=generator, dtype=torch.float32).tolist()
    widths = sorted([c.min_width] + [c.width_at(u) for u in draws], reverse=True)
    return [(width, int(torch.randint(len(c.scales), (), generator=generator))) for width in widths]


def scaled_side(scale: float, size: int) -> int:
    """The side a sub-network's input is resized to: ``scale`` of the batch's ``size``, at least 1."""
    return max(1, round(scale * size))


def resized(x: torch.Tensor, side: int) -> torch.Tensor:
    """A batch [..., C, H, W] resized to side x side (bilinear, corners aligned, as the GradAug code); x itself at
    its own size."""
    if side == x.shape[-1]:
        return x
    lead = x.shape[:-3]
    out = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(side, side), mode="bilinear", align_corners=True)
    return out.view(*lead, *out.shape[1:])


class GradAug(Strategy):
    """GradAug (Yang et al. 2020) as local training (FedAlign paper, eq. 2).

    CE of the full network plus mu * sum_i KL(softmax(full) || sub-network_i(T_i(x))): n sub-networks
    whose every hidden layer is sliced to a width (the smallest width and n - 1 widths drawn
    uniformly from [min_width, 1], largest first), each on the batch resized to a random scale.
    Each pass is back-propagated in turn, like the reference code, so memory stays at one pass.

    Vectorised training (the ResNets, min_width below 1) takes the same draws
    (`local_draws`): the full pass of every stacked client, then each sub-network pass over the clients that drew the
    same input size, every client at its own width (`ResNet.forward_widths_stacked`: layers sliced to the most
    channels a client's width keeps, each client's past its own held at 0), each pass back-propagated in turn.
    """

    standard_local_training = False
    vectorized: ClassVar[bool] = True

    def stacked_blocker(self, model: nn.Module, stacked_forward: bool = True, optimizer: str = "sgd") -> str | None:
        if self.config.draws_full_width():
            return (f"algorithm {self.name!r} at min_width {self.config.min_width} can draw full-width sub-networks, "
                    "whose batch norms move their running statistics (sequential client training only)")
        return slimmed_stack_blocker(self.name, model, stacked_forward, "forward_widths_stacked",
                                     "runs each client's sub-networks at its own width")

    def stacked_speed_blocker(self, model: nn.Module, device_type: str) -> str | None:
        # On an H200 (fp32, FedAlign's bottleneck ResNet56 with batch norm, batch 64, iid shards) the stacked rounds
        # took 0.9x the sequential speed at 16 clients x 640 samples (16.4 s against 14.0 s) and 0.8x at 64 clients
        # of one step (18.9 s against 14.2 s): each sub-network pass runs at its widest client's width, and at this
        # compute-bound size the narrower clients' cut channels cost what stacking saves. The basic-block ResNets'
        # launch-bound steps (batch 16) are not measured on a card and stay vectorised.
        if device_type == "cuda" and any(isinstance(m, Bottleneck) for m in model.modules()):
            return (f"algorithm {self.name!r} on bottleneck blocks was measured slower stacked than one client after "
                    "another on a GPU (0.8-0.9x on an H200)")
        return None

    def local_draws(self, n: int, generator: torch.Generator, scratch: dict[str, Any]) -> list[tuple[float, int]]:
        return gradaug_draws(self.config, generator)

    def local_gradients_vectorized(self, params: list[torch.Tensor],
                                   loss: Callable[[list[torch.Tensor]], torch.Tensor]
                                   ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        c, batch = self.config, loss.batch
        model, k, size = batch.model, batch.x.shape[0], batch.x.shape[-1]
        named = dict(zip(batch.names, params, strict=True))
        logits = at_least_float32(model.forward_stacked(named, batch.x, norm=batch.norm(True)))
        ce = stacked_mean_loss(logits, batch.y, batch.mask)
        grads = stacked_gradients(ce, params)
        target = F.softmax(logits.detach(), dim=-1)
        total = ce.detach().clone()
        sub_norm = batch.norm(False)
        for j in range(c.num_subnets):
            widths = [draws[j][0] for draws in batch.draws]
            sides = [scaled_side(c.scales[draws[j][1]], size) for draws in batch.draws]
            for side in sorted(set(sides), reverse=True):  # one stacked pass per input size
                members = [i for i, s in enumerate(sides) if s == side]
                rows = None if len(members) == k else torch.tensor(members, device=batch.x.device)

                def part(t: torch.Tensor, rows: torch.Tensor | None = rows) -> torch.Tensor:
                    return t if rows is None else t.index_select(0, rows)

                # The batch norms' state of the pass's clients, with the trainer's `single` so that a 1x1 layer reads
                # no mask on the host (StackedNorm): every client's state as it is; for some clients their mask rows
                # (with counts of their own) and False where no client has one sample, else None (read from their
                # mask: the client of one sample may be in another pass)
                norm = sub_norm if sub_norm is None or rows is None else replace(
                    sub_norm, mask=None if sub_norm.mask is None else part(sub_norm.mask), counts={},
                    single=False if sub_norm.single is False else None)
                out = model.forward_widths_stacked({n: part(p) for n, p in named.items()}, resized(part(batch.x), side),
                                                   [widths[i] for i in members], norm=norm)
                mask = part(batch.mask)
                kl = F.kl_div(F.log_softmax(at_least_float32(out), dim=-1), part(target), reduction="none").sum(-1)
                kl = c.mu * (kl * mask).sum(1) / mask.sum(1)  # each client's batchmean over its real rows
                for i, g in enumerate(stacked_gradients(kl, params)):
                    if g is not None:
                        grads[i] = g if grads[i] is None else grads[i] + g
                total = total + kl.detach() if rows is None else total.index_add(0, rows, kl.detach())
        return total, grads

    def local_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        c = self.config
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        ce.backward()
        target = F.softmax(logits.detach(), dim=1)
        total = ce.detach()
        for width, scale in gradaug_draws(c, ctx.generator):
            out = model.forward_width(resized(x, scaled_side(c.scales[scale], x.shape[-1])), width)
            kl = c.mu * F.kl_div(F.log_softmax(out, dim=1), target, reduction="batchmean")
            kl.backward()
            total = total + kl.detach()
        return total
