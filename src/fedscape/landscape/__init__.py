"""Loss landscapes: planes, projection of checkpoints onto them, and loss-surface grids.

Li et al. 2018 ("Visualizing the loss landscape of neural nets") and Li et al. 2022 (FL
loss-landscape pilot study): every figure is a set of checkpoints projected onto a 2-D plane over
the loss surface ``L(centre + a d1 + b d2)``.
"""

from fedscape.landscape.planes import (
    PLANE_KINDS,
    PCAResult,
    Plane,
    PlaneError,
    filter_normalized_direction,
    joint_pca_plane,
    load_plane,
    pca_directions,
    pca_plane,
    random_plane,
    save_plane,
    three_point_plane,
)
from fedscape.landscape.project import Projection, project
from fedscape.landscape.surface import (
    Grid,
    LayoutFlatParams,
    SurfaceEvaluator,
    SurfaceSettings,
    chunk_bounds,
    compute_surface,
    evaluate_chunk,
    gather_chunks,
    grid_extent,
)

__all__ = [
    "PLANE_KINDS", "PCAResult", "Plane", "PlaneError", "Projection", "Grid", "LayoutFlatParams", "SurfaceEvaluator",
    "SurfaceSettings", "chunk_bounds", "compute_surface", "evaluate_chunk", "filter_normalized_direction",
    "gather_chunks", "grid_extent", "joint_pca_plane", "load_plane", "pca_directions", "pca_plane", "project",
    "random_plane", "save_plane", "three_point_plane",
]
