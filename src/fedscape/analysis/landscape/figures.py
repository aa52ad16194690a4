"""Contour figures of loss surfaces with the projected checkpoints drawn on them (pilot study Figs 1-7).

A figure is drawn from its surface .npz alone, so it can be redrawn without recomputation; the
grid and the points are also written as CSV beside the figure for other tools.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.colors import LogNorm
from matplotlib.patches import Patch

from fedscape.analysis.landscape.definitions import run_labels, three_point_axis_labels
from fedscape.analysis.landscape.gather import load_surface
from fedscape.core.io import atomic_path
from fedscape.core.runs import parse_run_id
from fedscape.core.setting import format_setting
from fedscape.outputs.style import PALETTE, SEQUENTIAL_CMAP, log_levels, pyplot, setting_colors, write_formats

# A dark outline keeps white labels legible on the light (high-loss) end of the colour map.
_OUTLINE = patheffects.withStroke(linewidth=1.5, foreground="black")
log = logging.getLogger("fedscape.landscape")



def data_description(data: str) -> str:
    if data == "train":
        return "L: aggregate training data (union of the clients' data)"
    if data == "test":
        return "test set"
    if data.startswith("client~"):
        return f"L_m: data of client {data.split('~', 1)[1]}"
    return data


def clipped_surface(loss: np.ndarray, levels: np.ndarray) -> np.ma.MaskedArray:
    """The losses to draw: NaN and inf masked (they show the hatched background), finite values clipped into the
    levels' range. Masked before clipping: clipping first would draw an infinite loss in the top colour."""
    return np.ma.clip(np.ma.masked_invalid(loss), levels[0], levels[-1])


def write_figure_data(surface: dict, grid_csv: str | Path, points_csv: str | Path) -> None:
    """The figure's input as CSV: the grid in long form (a, b, loss, acc) and the projected points."""
    a, b = np.meshgrid(surface["a"], surface["b"])
    grid = pd.DataFrame({"a": a.ravel(), "b": b.ravel(), "loss": surface["loss"].ravel(),
                         "acc": surface["acc"].ravel()})
    points = pd.DataFrame({
        "label": surface["points_label"], "group": surface["points_group"], "role": surface["points_role"],
        "run_id": surface["points_run_id"], "round": surface["points_round"], "client": surface["points_client"],
        "a": surface["points_xy"][:, 0], "b": surface["points_xy"][:, 1], "distance": surface["points_distance"],
        "rel_distance": surface["points_rel_distance"],
    })
    for df, path in ((grid, grid_csv), (points, points_csv)):
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)


def plot_surface(surface: dict, out_pdf: str | Path, out_png: str | Path, overlay: dict | None = None,
                 levels: int = 30, clip_loss: float | None = None, settings: Sequence[str] = ()) -> None:
    """Filled log-spaced loss contours, divergent regions hatched, checkpoints drawn and labelled. `settings`: every
    heterogeneity setting of the workflow's runs, so that a setting has the colour it has in every other figure
    (without them: the settings on this plane)."""
    plt = pyplot()
    meta = surface["meta"]
    a, b, loss = surface["a"], surface["b"], np.asarray(surface["loss"], dtype=np.float64)
    lv = log_levels(loss, levels, clip_loss)
    z = clipped_surface(loss, lv)
    fig, ax = plt.subplots(figsize=(6.4, 5.2), constrained_layout=True)
    ax.set_facecolor("#d9d9d9")
    handles = []
    nonfinite = int((~np.isfinite(loss)).sum())
    if nonfinite:  # masked cells show the hatched background
        ax.add_patch(plt.Rectangle((a[0], b[0]), a[-1] - a[0], b[-1] - b[0], facecolor="#d9d9d9", hatch="xx",
                                   edgecolor="#969696", zorder=0))
        handles.append(Patch(facecolor="#d9d9d9", hatch="xx", edgecolor="#969696",
                             label=f"diverged (NaN/inf): {nonfinite} points"))
    clipped = bool((loss[np.isfinite(loss)] > lv[-1]).any())
    cf = ax.contourf(a, b, z, levels=lv, norm=LogNorm(lv[0], lv[-1]), cmap=SEQUENTIAL_CMAP,
                     extend="max" if clipped else "neither", zorder=1)
    ax.contour(a, b, z, levels=lv[::3], colors="white", linewidths=0.4, alpha=0.6, zorder=2)
    cbar = fig.colorbar(cf, ax=ax)
    ticks = lv[:: max(1, (len(lv) - 1) // 6)]
    cbar.ax.minorticks_off()
    cbar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
    cbar.set_label("loss (log scale" + (f", clipped at {lv[-1]:.3g})" if clipped else ")"))
    if overlay is not None:
        oloss = np.asarray(overlay["loss"], dtype=np.float64)
        olv = log_levels(oloss, 10, clip_loss)
        ax.contour(overlay["a"], overlay["b"], clipped_surface(oloss, olv), levels=olv,
                   colors=PALETTE[1], linewidths=0.9, linestyles="dashed", zorder=3)
        handles.append(plt.Line2D([], [], color=PALETTE[1], linestyle="dashed",
                                  label=f"{data_description(overlay['meta']['data'])} (contours)"))
    # the client whose data the contours show (the overlay's, else the surface's own) is the one highlighted
    handles += _draw_points(ax, surface, highlight=(overlay or surface)["meta"]["data"], settings=settings)
    labels = meta.get("axis_labels") or ["d1", "d2"]
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_xlim(a[0], a[-1])
    ax.set_ylim(b[0], b[-1])
    round_txt = "" if meta.get("round") is None else f", round {meta['round']}"
    # a surface whose points carry their own batch-norm statistics says so; the default holds the centre's
    bn_txt = "\nBN statistics recomputed at each point" if meta.get("bn_stats") == "recomputed" else ""
    ax.set_title(f"{meta['surface_id']} ({meta['kind']}{round_txt})\n{data_description(meta['data'])}{bn_txt}",
                 fontsize=9)
    if handles:  # framed (the style's default is frameless): the legend may sit on the filled contours
        ax.legend(handles=handles, fontsize=7, loc="best", frameon=True, framealpha=0.85)
    write_formats(fig, {Path(out).suffix.lstrip("."): out for out in (out_pdf, out_png)}, dpi=150, tight=False)


def _outward(ax, start, p, points: float = 8.0) -> tuple[float, float]:
    """An offset in points from client model `p` away from the round start (along its update, on screen): the
    clients' labels sit beyond their arrow heads, not on the arrows of clients that moved little."""
    a, b = ax.transData.transform([start, p])
    d = b - a
    norm = float(np.hypot(*d))
    return (points * 0.7, points * 0.7) if norm == 0 else (points * d[0] / norm, points * d[1] / norm)


def _draw_points(ax, surface: dict, highlight: str | None, settings: Sequence[str] = ()) -> list:
    """Trajectories as lines (start o, end *), local scope as arrows start -> client -> aggregate, others as markers."""
    plt = pyplot()
    xy = surface["points_xy"]
    if len(xy) == 0:
        return []
    roles, groups, labels = surface["points_role"], surface["points_group"], surface["points_label"]
    clients = surface["points_client"]
    kind = surface["meta"]["kind"]
    handles = []
    if kind == "local":
        start = xy[roles == "round_start"][0]
        agg = xy[roles == "aggregate"][0]
        chosen = int(highlight.split("~")[1]) if highlight and highlight.startswith("client~") else None
        if chosen is not None and chosen not in clients[roles == "client"].tolist():
            log.warning("surface %s: client %d did not train in round %s (partial participation), so no client "
                        "model is highlighted; its data's contours are drawn all the same",
                        surface["meta"]["surface_id"], chosen, surface["meta"].get("round"))
        for p, cid in zip(xy[roles == "client"], clients[roles == "client"], strict=True):
            color = PALETTE[1] if cid == chosen else "white"
            ax.annotate("", xy=p, xytext=start, arrowprops={"arrowstyle": "->", "color": color, "lw": 1.0}, zorder=4)
            ax.annotate("", xy=agg, xytext=p, arrowprops={"arrowstyle": "->", "color": color, "lw": 0.6,
                                                          "linestyle": "dotted"}, zorder=4)
            ax.plot(*p, "o", color=color, markeredgecolor="black", markersize=5, zorder=5)
            ax.annotate(str(cid), p, textcoords="offset points", xytext=_outward(ax, start, p), fontsize=7,
                        color="white", ha="center", va="center", zorder=6, path_effects=[_OUTLINE])
        ax.plot(*start, "^", color=PALETTE[4], markeredgecolor="black", markersize=10, zorder=6)
        ax.plot(*agg, "*", color=PALETTE[4], markeredgecolor="black", markersize=14, zorder=6)
        handles += [plt.Line2D([], [], marker="^", linestyle="", color=PALETTE[4], markeredgecolor="black",
                               label=str(labels[roles == "round_start"][0])),
                    plt.Line2D([], [], marker="o", linestyle="", color="white", markeredgecolor="black",
                               label="client models after local training"),
                    plt.Line2D([], [], marker="*", linestyle="", color=PALETTE[4], markeredgecolor="black",
                               markersize=12, label=str(labels[roles == "aggregate"][0]))]
        if chosen is not None:
            handles.append(plt.Line2D([], [], marker="o", linestyle="", color=PALETTE[1], markeredgecolor="black",
                                      label=f"client {chosen}"))
        return handles
    order = list(dict.fromkeys(groups.tolist()))
    styles = group_styles(order, groups, surface["points_run_id"], settings)
    for group in order:
        sel = groups == group
        color, linestyle, marker = styles[group]
        pts = xy[sel]
        if kind in ("trajectory", "trajectories"):
            ax.plot(pts[:, 0], pts[:, 1], linestyle=linestyle, color=color, lw=1.4, zorder=4)
            ax.plot(pts[:, 0], pts[:, 1], ".", color=color, markersize=4, zorder=4)
            ax.plot(*pts[0], "o", color=color, markeredgecolor="black", markersize=6, zorder=5)
            ax.plot(*pts[-1], "*", color=color, markeredgecolor="black", markersize=13, zorder=5)
            handles.append(plt.Line2D([], [], color=color, linestyle=linestyle, marker="*", markeredgecolor="black",
                                      label=group))
        else:
            ax.plot(pts[:, 0], pts[:, 1], marker, color=color, markeredgecolor="black", markersize=8, zorder=5)
            for p, lab in zip(pts, labels[sel], strict=True):
                ax.annotate(str(lab), p, textcoords="offset points", xytext=(5, 5), fontsize=7, color="white",
                            zorder=6)
            handles.append(plt.Line2D([], [], color=color, marker=marker, linestyle="", markeredgecolor="black",
                                      label=group))
    if kind in ("trajectory", "trajectories"):
        handles += [plt.Line2D([], [], marker="o", linestyle="", color="white", markeredgecolor="black",
                               label="start (round 0)"),
                    plt.Line2D([], [], marker="*", linestyle="", color="white", markeredgecolor="black",
                               markersize=11, label="final model")]
    return handles


GROUP_LINESTYLES = ("-", "--", ":", "-.")  # groups of one setting: trajectories told apart by line style
GROUP_MARKERS = ("o", "s", "^", "D")  # and single checkpoints by marker


def group_styles(order: list[str], groups: np.ndarray, run_ids: np.ndarray,
                 settings: Sequence[str] = ()) -> dict[str, tuple[str, object, str]]:
    """(colour, line style, marker) of each group of points. Colour = the runs' heterogeneity setting, as in every
    fedscape figure (`settings`: all of the workflow's, so a setting keeps its colour; otherwise those on this
    plane); groups of one setting (e.g. two inits at alpha 0.1) differ by line style and marker, in turn. Points
    of no run's setting (none parsed) take the palette in turn."""
    setting_of = {group: parse_run_id(str(run_ids[groups == group][0])).get("alpha") for group in order}
    if None in setting_of.values():
        return {g: (PALETTE[i % len(PALETTE)], "-", "o") for i, g in enumerate(order)}
    colors = setting_colors([*settings, *setting_of.values()])
    seen: dict[str, int] = {}
    styles = {}
    for group in order:
        setting = format_setting(setting_of[group])
        k = seen[setting] = seen.get(setting, -1) + 1
        styles[group] = (colors[setting], GROUP_LINESTYLES[k % len(GROUP_LINESTYLES)],
                         GROUP_MARKERS[k % len(GROUP_MARKERS)])
    return styles


def with_run_labels(surface: dict) -> dict:
    """`surface` with its runs' labels made now from their ids (`run_labels`), not as its plane job wrote them into
    its points: the plane job is costly to rerun, and a plane made before a label's text changed keeps the old text
    (0.125 of the clients read '12% sampled' before every digit was kept). A point label that begins with its run's
    label (the models of final_models, random, hessian and three_points: '<run>, round 5') begins with the new one,
    and three_points' axes name the new ones; a trajectory's points are named by their round, the local scope's
    by their role, as they were."""
    meta = surface["meta"]
    if meta["kind"] == "local" or not len(surface["points_xy"]):
        return surface
    runs = list(meta["runs"])
    now = dict(zip(runs, run_labels([parse_run_id(run) for run in runs]), strict=True))
    run_ids, groups = surface["points_run_id"].tolist(), surface["points_group"].tolist()
    labels = surface["points_label"].tolist()
    if meta["kind"] not in ("trajectory", "trajectories"):
        labels = [now[run] + label[len(group):] if label.startswith(group) else label
                  for run, group, label in zip(run_ids, groups, labels, strict=True)]
    out = {**surface, "points_group": np.array([now[run] for run in run_ids]), "points_label": np.array(labels)}
    if meta["kind"] == "three_points":
        names = [label for label, role in zip(labels, surface["points_role"], strict=True) if role == "checkpoint"]
        out["meta"] = {**meta, "axis_labels": list(three_point_axis_labels(names))}
    return out


def landscape_figure_job(settings: dict, surface_path: str, overlay_path: str | None, outputs: dict[str, str]) -> None:
    """Contour figure (PDF and PNG) of one surface, drawn from its .npz only, with its data as CSV beside it
    (`settings`: `fedscape.plan.landscape.figure_settings`)."""
    surface = with_run_labels(load_surface(surface_path))
    overlay = load_surface(overlay_path) if overlay_path else None
    write_figure_data(surface, outputs["grid_csv"], outputs["points_csv"])
    plot_surface(surface, outputs["pdf"], outputs["png"], overlay=overlay, levels=settings["levels"],
                 clip_loss=settings["clip_loss"], settings=settings.get("run_settings", ()))
    log.info("figure of surface %s: %s", settings["surface_id"], outputs["pdf"])
