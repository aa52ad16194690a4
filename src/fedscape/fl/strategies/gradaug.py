"""GradAug (Yang et al. 2020) as local training, a baseline of the FedAlign paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedscape.fl.strategies.base import ClientContext, Strategy


class GradAug(Strategy):
    """GradAug (Yang et al. 2020) as local training (FedAlign paper, eq. 2).

    CE of the full network plus mu * sum_i KL(softmax(full) || sub-network_i(T_i(x))): n sub-networks
    whose every hidden layer is sliced to a width (the smallest width and n - 1 widths drawn
    uniformly from [min_width, 1], largest first), each on the batch resized to a random scale.
    Each pass is back-propagated in turn, like the reference code, so memory stays at one pass.
    """

    standard_local_training = False


    def local_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        c = self.config
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        ce.backward()
        target = F.softmax(logits.detach(), dim=1)
        draws = torch.rand(c.num_subnets - 1, generator=ctx.generator).tolist()
        widths = sorted([c.min_width] + [c.min_width + u * (1 - c.min_width) for u in draws], reverse=True)
        total = ce.detach()
        size = x.shape[-1]
        for width in widths:
            scale = c.scales[int(torch.randint(len(c.scales), (), generator=ctx.generator))]
            side = max(1, round(scale * size))
            xs = x if side == size else F.interpolate(x, size=(side, side), mode="bilinear", align_corners=True)
            out = model.forward_width(xs, width)
            kl = c.mu * F.kl_div(F.log_softmax(out, dim=1), target, reduction="batchmean")
            kl.backward()
            total = total + kl.detach()
        return total
