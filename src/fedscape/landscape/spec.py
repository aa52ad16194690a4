"""The `landscapes` config section resolved to runs, checked, and turned into per-job settings.

The code lives in the torch-free `fedscape.landscape_plan` (importing this module runs the torch-based
`fedscape.landscape` package first); it is re-exported here for the existing imports.
"""

from fedscape.landscape_plan import (  # noqa: F401
    DATA_SETS,
    HESSIAN_PLANE,
    LANDSCAPE_ROOT,
    PLANE_KIND_OF,
    SINGLE_RUN_KINDS,
    SURFACE_KINDS,
    Checkpoint,
    LandscapePlan,
    _check_round,
    _fields,
    _round_value,
    _rounds_of,
    _select,
    check_landscapes,
    chunk_settings,
    data_names,
    figure_settings,
    hessian_plane_path,
    landscape_plans,
    overlay_data,
    plane_settings,
    resolve_landscape,
    run_training,
    surface_settings,
)
