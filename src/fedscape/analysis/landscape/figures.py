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
from fedscape.outputs.style import (
    PALETTE,
    SEQUENTIAL_CMAP,
    legend_key,
    log_levels,
    pyplot,
    setting_colors,
    write_formats,
)

# A dark outline keeps white labels legible on the light (high-loss) end of the colour map.
_OUTLINE = patheffects.withStroke(linewidth=1.5, foreground="black")
log = logging.getLogger("fedscape.landscape")
# A checkpoint whose rel_distance (the share of its distance from the plane's centre that lies off the plane:
# `project.Projection`) exceeds OFF_PLANE is drawn hollow: more of it is off the plane than half its distance, so the
# surface under its marker is the loss of its projection, a model that far from it, not its own (the local scope's
# clients: a median of 0.79 in the default run's local_0.1_r10).
OFF_PLANE = 0.5
OFF_PLANE_NOTE = f"hollow: a model with more than {OFF_PLANE:.0%} of its distance off the plane"
# Every plane kind's two directions have one length, so one unit on either axis is one distance in parameter space,
# and the plane is drawn to scale (equal aspect; the pilot study's Fig. 3 compares distances on it): pca and
# joint_pca (unit principal directions), three_points (Gram-Schmidt orthonormal), hessian (unit eigenvectors) and
# random (filter-normalised, Li et al. 2018: each filter of either direction takes the norm of the centre's filter,
# biases zero, so both have the norm of the centre's weight tensors; independent draws, orthogonal to about
# 1/sqrt(parameters)).
# The axes box keeps PLANE_BOX_SIDE**2 of area, at most MAX_STRETCH times as long as high (or as high as long): a
# longer extent is drawn with its short axis stretched, as the title says, where equal aspect would leave a strip.
PLANE_BOX_SIDE = 4.6  # inches
MAX_STRETCH = 3.0
# Inches around the axes box, placed by hand (a layout engine sizes a box of fixed aspect to its slot, and its colour
# bar to the slot's height): left (the y label and tick labels), bottom (the x label and tick labels), right (the
# colour bar, COLORBAR inches apart and wide, as high as the box, with its labels) and top, a title line each. The
# written file is cropped to what is drawn (`write_formats`' tight), so the margins need only be wide enough.
PLANE_MARGINS = {"left": 0.9, "bottom": 0.65, "right": 1.5, "top": 0.15, "title_line": 0.17}
COLORBAR = (0.15, 0.2)


def plane_layout(a: np.ndarray, b: np.ndarray) -> tuple[tuple[float, float], float, str]:
    """The axes box (width, height in inches), the axes' aspect (1: to scale) and a title line (empty unless the plane
    is not drawn to scale) of the plane spanning the grid coordinates `a` x `b`."""
    ratio = float((a[-1] - a[0]) / (b[-1] - b[0]))
    shape = float(np.clip(ratio, 1 / MAX_STRETCH, MAX_STRETCH))
    aspect = ratio / shape  # 1 within the bounds; else how many times the short axis is stretched (> 1: b's, < 1: a's)
    stretched = "vertical" if aspect > 1 else "horizontal"
    note = "" if aspect == 1 else f"\nnot to scale: {stretched} axis stretched {max(aspect, 1 / aspect):.3g}x"
    return (PLANE_BOX_SIDE * np.sqrt(shape), PLANE_BOX_SIDE / np.sqrt(shape)), aspect, note



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
    round_txt = "" if meta.get("round") is None else f", round {meta['round']}"
    # a surface whose points carry their own batch-norm statistics says so; the default holds the centre's
    bn_txt = "\nBN statistics recomputed at each point" if meta.get("bn_stats") == "recomputed" else ""
    box, aspect, scale_note = plane_layout(a, b)
    hollow = f"\n{OFF_PLANE_NOTE}" if (surface["points_rel_distance"] > OFF_PLANE).any() else ""
    title = (f"{meta['surface_id']} ({meta['kind']}{round_txt})\n{data_description(meta['data'])}{bn_txt}{scale_note}"
             f"{hollow}")
    fig, ax, cax = _plane_axes(box, title.count("\n") + 1)
    ax.set_xlim(a[0], a[-1])  # the limits and the aspect first: `_outward` places the clients' labels on screen
    ax.set_ylim(b[0], b[-1])
    ax.set_aspect(aspect)
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
    cbar = fig.colorbar(cf, cax=cax)
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
    ax.set_title(title, fontsize=9)
    if handles:  # framed (the style's default is frameless): the legend may sit on the filled contours
        ax.legend(handles=handles, fontsize=7, loc="best", frameon=True, framealpha=0.85,
                  handlelength=LEGEND_HANDLE_LENGTH)
    write_formats(fig, {Path(out).suffix.lstrip("."): out for out in (out_pdf, out_png)}, dpi=150)


def _plane_axes(box: tuple[float, float], title_lines: int):
    """A figure holding an axes box of `box` inches and its colour bar's axes beside it (PLANE_MARGINS, COLORBAR):
    (figure, axes, colour bar axes)."""
    m = PLANE_MARGINS
    top = m["top"] + m["title_line"] * title_lines
    width, height = m["left"] + box[0] + m["right"], m["bottom"] + box[1] + top
    fig = pyplot().figure(figsize=(width, height))
    ax = fig.add_axes((m["left"] / width, m["bottom"] / height, box[0] / width, box[1] / height))
    cax = fig.add_axes(((m["left"] + box[0] + COLORBAR[0]) / width, m["bottom"] / height, COLORBAR[1] / width,
                        box[1] / height))
    return fig, ax, cax


def _outward(ax, start, p, points: float = 8.0) -> tuple[float, float]:
    """An offset in points from client model `p` away from the round start (along its update, on screen): the
    clients' labels sit beyond their arrow heads, not on the arrows of clients that moved little."""
    a, b = ax.transData.transform([start, p])
    d = b - a
    norm = float(np.hypot(*d))
    return (points * 0.7, points * 0.7) if norm == 0 else (points * d[0] / norm, points * d[1] / norm)


def _markers(ax, xy: np.ndarray, off: np.ndarray, marker: str, color, markersize: float, edge="black",
             hollow_size: float | None = None, **style) -> None:
    """Markers at the points `xy` [N, 2] in `color` with an `edge`, or hollow (a ring of `color`, `hollow_size` across
    where a small marker would leave no hole) where `off` (a checkpoint far off the plane: OFF_PLANE)."""
    for hollow in (False, True):
        sel = off == hollow
        if sel.any():
            face = {"markerfacecolor": "none", "markeredgecolor": color, "markeredgewidth": 1.2,
                    "markersize": hollow_size or markersize} if hollow else \
                {"markerfacecolor": color, "markeredgecolor": edge, "markersize": markersize}
            ax.plot(xy[sel, 0], xy[sel, 1], marker, color=color, linestyle="none", **face, **style)


def _draw_points(ax, surface: dict, highlight: str | None, settings: Sequence[str] = ()) -> list:
    """Trajectories as lines (start o, end *), local scope as arrows start -> client -> aggregate, others as markers;
    a checkpoint far off the plane hollow (OFF_PLANE; the title says so: `plot_surface`)."""
    plt = pyplot()
    xy = surface["points_xy"]
    if len(xy) == 0:
        return []
    roles, groups, labels = surface["points_role"], surface["points_group"], surface["points_label"]
    clients = surface["points_client"]
    off = surface["points_rel_distance"] > OFF_PLANE
    kind = surface["meta"]["kind"]
    handles = []
    if kind == "local":
        is_start, is_agg = roles == "round_start", roles == "aggregate"
        start, agg = xy[is_start][0], xy[is_agg][0]
        chosen = int(highlight.split("~")[1]) if highlight and highlight.startswith("client~") else None
        if chosen is not None and chosen not in clients[roles == "client"].tolist():
            log.warning("surface %s: client %d did not train in round %s (partial participation), so no client "
                        "model is highlighted; its data's contours are drawn all the same",
                        surface["meta"]["surface_id"], chosen, surface["meta"].get("round"))
        is_client = roles == "client"
        for p, cid, far in zip(xy[is_client], clients[is_client], off[is_client], strict=True):
            color = PALETTE[1] if cid == chosen else "white"
            ax.annotate("", xy=p, xytext=start, arrowprops={"arrowstyle": "->", "color": color, "lw": 1.0}, zorder=4)
            ax.annotate("", xy=agg, xytext=p, arrowprops={"arrowstyle": "->", "color": color, "lw": 0.6,
                                                          "linestyle": "dotted"}, zorder=4)
            _markers(ax, p[None], np.array([far]), "o", color, markersize=5, zorder=5)
            ax.annotate(str(cid), p, textcoords="offset points", xytext=_outward(ax, start, p), fontsize=7,
                        color="white", ha="center", va="center", zorder=6, path_effects=[_OUTLINE])
        _markers(ax, start[None], off[is_start][:1], "^", PALETTE[4], markersize=10, zorder=6)
        _markers(ax, agg[None], off[is_agg][:1], "*", PALETTE[4], markersize=14, zorder=6)
        handles += [plt.Line2D([], [], marker="^", linestyle="", color=PALETTE[4], markeredgecolor="black",
                               label=str(labels[is_start][0])),
                    plt.Line2D([], [], marker="o", linestyle="", color="white", markeredgecolor="black",
                               label="client models after local training"),
                    plt.Line2D([], [], marker="*", linestyle="", color=PALETTE[4], markeredgecolor="black",
                               markersize=12, label=str(labels[is_agg][0]))]
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
        far = off[sel]
        if kind in ("trajectory", "trajectories"):
            # the rounds between start and end take the group's marker: runs of one setting (one colour) then differ
            # in marker as well as in line style, in the legend too, where a start or end marker would hide the line
            ax.plot(pts[:, 0], pts[:, 1], linestyle=linestyle, color=color, lw=TRAJECTORY_LW, zorder=4)
            _markers(ax, pts[1:-1], far[1:-1], marker, color, markersize=ROUND_MARKER_SIZE, edge=color,
                     hollow_size=4.5, zorder=4)
            _markers(ax, pts[:1], far[:1], "o", color, markersize=6, zorder=5)
            _markers(ax, pts[-1:], far[-1:], "*", color, markersize=13, zorder=5)
            handles.append(plt.Line2D([], [], color=color, linestyle=linestyle, lw=TRAJECTORY_LW, marker=marker,
                                      markersize=ROUND_MARKER_SIZE, label=group))
        else:
            _markers(ax, pts, far, marker, color, markersize=8, zorder=5)
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


GROUP_LINESTYLES = ("-", "--", ":", "-.")  # groups of one setting: told apart by line style (trajectories)
GROUP_MARKERS = ("o", "s", "^", "D")  # and marker (a trajectory's rounds, single checkpoints)
TRAJECTORY_LW = 1.4
ROUND_MARKER_SIZE = 3.5  # a trajectory's rounds: a circle and a square of this size are told apart
# The legend's lines, in font sizes (matplotlib's default: 2): long enough to show a dashed or dotted line's pattern
# on either side of its marker.
LEGEND_HANDLE_LENGTH = 3.5


def group_styles(order: list[str], groups: np.ndarray, run_ids: np.ndarray,
                 settings: Sequence[str] = ()) -> dict[str, tuple[str, object, str]]:
    """(colour, line style, marker) of each group of points. Colour = the runs' heterogeneity setting, as in every
    fedscape figure (`settings`: all of the workflow's, so a setting keeps its colour; otherwise those on this
    plane); groups of one setting (e.g. two inits at alpha 0.1) differ by line style and marker, in turn, the random
    init first (solid, circles: the baseline's plainest styles, as `outputs.style.RunStyle` gives it). Points of no
    run's setting (none parsed) take the palette in turn."""
    fields = {group: parse_run_id(str(run_ids[groups == group][0])) for group in order}
    setting_of = {group: fields[group].get("alpha") for group in order}
    if None in setting_of.values():
        return {g: (PALETTE[i % len(PALETTE)], "-", "o") for i, g in enumerate(order)}
    colors = setting_colors([*settings, *setting_of.values()])
    seen: dict[str, int] = {}
    styles = {}
    for group in sorted(order, key=lambda g: legend_key(fields[g])):
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
