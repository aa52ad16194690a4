"""Coordinates of checkpoints on a plane, and how far each lies from it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedscape.analysis.landscape.planes import Plane


@dataclass(frozen=True)
class Projection:
    """Plane coordinates of N checkpoints and their distances from the plane."""

    coords: np.ndarray  # [N, 2] (a, b)
    distance: np.ndarray  # [N] ||w - (centre + a d1 + b d2)||
    rel_distance: np.ndarray  # [N] distance / ||w - centre|| (0 for the centre itself)


def project(points: torch.Tensor, plane: Plane) -> Projection:
    """Least-squares coordinates of `points` [N, P] on the plane (Li et al. 2018, Sec. 7).

    For orthonormal directions (PCA, three points, Hessian eigenvectors) these are the dot products
    with d1 and d2; random directions are not orthogonal, so the 2x2 Gram system is solved. The
    residual norm tells how faithful the 2-D picture is for each point. Computed in float64.
    """
    points = points.reshape(-1, plane.num_params)
    basis = torch.stack([plane.d1, plane.d2]).double()  # [2, P]
    gram = basis @ basis.T
    if float(torch.linalg.det(gram)) <= 1e-24 * float(gram.diagonal().prod()):
        raise ValueError("the plane's directions are parallel (or zero): cannot project onto it")
    center = plane.center.double()
    coords, dist, rel = [], [], []
    for w in points:
        diff = w.double() - center
        ab = torch.linalg.solve(gram, basis @ diff)
        resid = diff - ab @ basis
        norm = float(diff.norm())
        coords.append(ab.numpy())
        dist.append(float(resid.norm()))
        rel.append(float(resid.norm()) / norm if norm > 0 else 0.0)
    if not coords:
        return Projection(np.zeros((0, 2)), np.zeros(0), np.zeros(0))
    return Projection(np.stack(coords), np.asarray(dist), np.asarray(rel))
