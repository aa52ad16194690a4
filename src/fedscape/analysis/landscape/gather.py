"""The landscape gather and table jobs (torch-free): a surface's chunks assembled into surface.npz, and the
index of every surface, results/tables/surfaces.csv."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fedscape.analysis.landscape.definitions import POINT_COLUMNS, SURFACES_COLUMNS, plane_digest, read_plane_file
from fedscape.analysis.landscape.grid import Grid, gather_chunks
from fedscape.core.config import digest
from fedscape.core.io import atomic_path, remake_hint, write_csv
from fedscape.core.runs import OK
from fedscape.models.specs import BN_STATS_BASELINE
from fedscape.outputs.tables import UNRECORDED, read_table

log = logging.getLogger("fedscape.landscape")


# -- gather ----------------------------------------------------------------------------------------------
def landscape_gather_job(settings: dict, chunk_paths: list[str], plane_path: str, grid_path: str, points_path: str,
                         out: str) -> None:
    """Assemble a surface's chunks into one .npz with the grid, the projected points and the plane metadata."""
    grid = Grid.from_dict(json.loads(Path(grid_path).read_text()))
    want = digest(grid.to_dict())
    plane_arrays, plane = read_plane_file(plane_path)
    want_plane = plane_digest(plane_arrays)
    parts, n_eval, computed = [], None, {}
    for path in chunk_paths:
        chunk, meta = read_chunk(path)
        if meta["grid_digest"] != want:
            raise RuntimeError(f"{path} was computed on another grid; {remake_hint(path)}")
        # chunks written before the digest was recorded have none: the grid check is all they get
        if meta.get("plane_digest", want_plane) != want_plane:
            raise RuntimeError(f"{path} was computed on another plane than {plane_path} holds now; "
                               f"{remake_hint(path)}")
        # chunks written before the option were evaluated with the centre's statistics
        made, wanted = meta.get("bn_stats", BN_STATS_BASELINE), settings.get("bn_stats", BN_STATS_BASELINE)
        if made != wanted:
            raise RuntimeError(f"{path} was evaluated with batch-norm statistics {made!r}, the surface wants "
                               f"{wanted!r}; {remake_hint(path)}")
        parts.append(chunk)
        n_eval = meta["n_eval"]
        if meta.get("device") is not None:  # an evaluated chunk (a diverged plane's NaN chunks computed nothing)
            computed[path] = (meta.get("device_name", UNRECORDED), meta.get("precision_used", UNRECORDED))
    loss, acc = gather_chunks(parts, grid)
    points = read_table(points_path, POINT_COLUMNS, keep_default_na=False)
    plane_meta = {k: v for k, v in plane.items() if k != "model_meta"}
    plane_meta["model"] = (plane["model_meta"] or {}).get("model")
    nonfinite = int((~np.isfinite(loss)).sum())
    names, precisions = (list(dict.fromkeys(c[i] for c in computed.values())) for i in (0, 1))
    if len(precisions) > 1:  # chunks on cards of other kinds (tf32 computes fp32 before Ampere), or other settings
        log.warning("surface %s: its chunks were evaluated in %s (%s): the surface mixes precisions",
                    settings["surface_id"], " and ".join(precisions),
                    "; ".join(f"{Path(p).name}: {c[1]} on {c[0]}" for p, c in computed.items()))
    meta = {**settings, "round": model_round(settings["round"], points), "n_eval": n_eval,
            # where and how precisely its grid points were evaluated, every one met ("; " between several)
            "device_name": "; ".join(names) or None, "precision": "; ".join(precisions) or None,
            "extent": list(grid.extent),
            "axis_labels": list(plane["axis_labels"] or ("d1", "d2")),
            "explained_variance": plane["explained_variance"], "plane_kind": plane["kind"],
            "nonfinite_points": nonfinite, "status": plane.get("status", OK)}
    arrays = {
        "a": grid.a, "b": grid.b, "loss": loss, "acc": acc,
        "points_xy": points[["a", "b"]].to_numpy(dtype=np.float64).reshape(-1, 2),
        "points_distance": points["distance"].to_numpy(dtype=np.float64),
        "points_rel_distance": points["rel_distance"].to_numpy(dtype=np.float64),
        "points_round": points["round"].to_numpy(dtype=np.int64),
        "points_client": points["client"].to_numpy(dtype=np.int64),
        **{f"points_{k}": points[k].astype(str).to_numpy(dtype=str) for k in ("label", "group", "role", "run_id")},
        "plane_meta": np.array(json.dumps(plane_meta)),
        "meta": np.array(json.dumps(meta)),
    }
    with atomic_path(out, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    finite = loss[np.isfinite(loss)]
    log.info("surface %s: %dx%d grid from %d chunks, loss %.4g..%.4g, %d non-finite points", settings["surface_id"],
             grid.shape[0], grid.shape[1], len(chunk_paths), finite.min(initial=np.inf), finite.max(initial=-np.inf),
             nonfinite)


# The roles of the points that are the surface's models at its round (the other roles are earlier checkpoints, a
# round's clients, or a three_points plane's corners).
MODEL_ROLES = ("final", "center", "aggregate")


def model_round(planned: int | None, points: pd.DataFrame) -> int | None:
    """The round of the models the surface was made at: the planned round, unless every model point has one other
    round (`final` of a run that diverged: its last finite model, which the plane job picked and warned about)."""
    rounds = set(points.loc[points["role"].isin(MODEL_ROLES), "round"].astype(int))
    if planned is None or len(rounds) != 1:
        return planned
    return rounds.pop()


CHUNK_KEYS = ("index", "loss", "acc")


def read_chunk(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """A chunk file's arrays and meta; a ValueError naming the file and the fix when it is cut short or damaged
    (numpy alone raises a BadZipFile or EOFError that names neither)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in CHUNK_KEYS}
            meta = json.loads(str(npz["meta"]))
    except Exception as exc:  # truncated, not an npz, a key missing, or meta not JSON
        raise ValueError(f"cannot read the surface chunk {path} ({type(exc).__name__}: "
                         f"{(str(exc).splitlines() or [''])[0][:200]}): it is cut short or damaged; "
                         f"{remake_hint(path)}") from None
    return arrays, meta


def load_surface(path: str | Path) -> dict:
    """A surface .npz as a dict of arrays, with `meta` and `plane_meta` parsed."""
    with np.load(path, allow_pickle=False) as npz:
        out = {k: npz[k] for k in npz.files}
    out["meta"] = json.loads(str(out["meta"]))
    out["plane_meta"] = json.loads(str(out["plane_meta"]))
    return out


# -- table -----------------------------------------------------------------------------------------------
def surfaces_table_job(surface_paths: list[str], out: str) -> None:
    """results/tables/surfaces.csv: one row per surface (`SURFACES_COLUMNS`)."""
    rows = []
    for path in surface_paths:
        meta = load_surface(path)["meta"]
        rows.append({"surface_id": meta["surface_id"], "kind": meta["kind"], "runs": ";".join(meta["runs"]),
                     "round": "" if meta["round"] is None else int(meta["round"]), "data": meta["data"],
                     "resolution": int(meta["resolution"]), "path": str(path),
                     "bn_stats": meta.get("bn_stats", BN_STATS_BASELINE),
                     # surfaces gathered before these were recorded say so; a diverged plane's computed nothing
                     **{key: meta.get(key, UNRECORDED) or "" for key in ("device_name", "precision")}})
    write_csv(pd.DataFrame(rows, columns=SURFACES_COLUMNS), out)
