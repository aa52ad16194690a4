"""A landscape figure tells its runs apart: runs of one setting share its colour (as in every fedscape figure) and
differ in marker and line style, on the plane and in the legend alike; the random init takes the plainest styles."""

from __future__ import annotations

import numpy as np
import pytest

import fedscape.analysis.landscape.figures as figures
from fedscape.core.runs import Run
from fedscape.outputs.style import PALETTE


def _run(alpha: str = "0.1", init: str = "random", algorithm: str = "fedavg", participation: str = "1.0") -> str:
    return Run("digits", "cnn_small", init, algorithm, alpha, 10, participation, 0).run_id


def _trajectories(runs: dict[str, str]) -> dict:
    """A trajectories surface of the runs {group label: run id}, four rounds each, every point on the plane; the
    groups' points apart (group g's at x = g + round / 10)."""
    a = b = np.linspace(-1.0, 4.0, 6)
    aa, bb = np.meshgrid(a, b)
    rows = [(group, run, t) for group, run in runs.items() for t in range(4)]
    n = len(rows)
    xy = np.array([[g + t / 10, t / 5] for g in range(len(runs)) for t in range(4)])
    return {
        "a": a, "b": b, "loss": 0.1 + aa ** 2 + bb ** 2, "acc": np.zeros(aa.shape), "points_xy": xy,
        "points_distance": np.zeros(n), "points_rel_distance": np.zeros(n),
        "points_round": np.array([t for *_, t in rows]), "points_client": np.full(n, -1),
        "points_label": np.array([f"round {t}" for *_, t in rows]), "points_group": np.array([g for g, *_ in rows]),
        "points_role": np.array(["init" if t == 0 else "global" for *_, t in rows]),
        "points_run_id": np.array([run for _, run, _ in rows]),
        "meta": {"surface_id": "p/train", "kind": "trajectories", "data": "train", "round": 3,
                 "axis_labels": ["PC1", "PC2"], "runs": list(runs.values())},
    }


def _drawn_styles(monkeypatch, surface: dict) -> tuple[dict, dict]:
    """({group: (colour, marker, line style)} of the trajectories drawn: their line's colour and style and their
    rounds' marker, {label: (colour, marker, line style)} of the legend's entries)."""
    figs = []
    monkeypatch.setattr(figures, "write_formats", lambda fig, *args, **kwargs: figs.append(fig))
    figures.plot_surface(surface, "s.pdf", "s.png", levels=8, settings=["iid", "1.0", "0.1"])
    ax = figs[0].axes[0]
    drawn = {}
    for group in dict.fromkeys(surface["points_group"].tolist()):
        xs = surface["points_xy"][surface["points_group"] == group, 0]
        lines = [line for line in ax.get_lines() if len(line.get_xdata())]
        (path,) = [line for line in lines if np.array_equal(line.get_xdata(), xs)]
        (rounds,) = [line for line in lines if np.array_equal(line.get_xdata(), xs[1:-1])]
        drawn[group] = (path.get_color(), rounds.get_marker(), path.get_linestyle())
    legend = ax.get_legend()
    entries = {text.get_text(): (handle.get_color(), handle.get_marker(), handle.get_linestyle())
               for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)}
    return drawn, entries


@pytest.mark.parametrize(("a", "b", "same_colour"), [
    # one field apart at alpha 0.1: one colour, told apart by marker and line style
    (_run(init="random"), _run(init="pretrained"), True),
    (_run(init="random"), _run(init="warmup"), True),
    (_run(algorithm="fedavg"), _run(algorithm="fedprox"), True),
    (_run(participation="1.0"), _run(participation="0.5"), True),
    # alpha apart: told apart by colour (each the first of its setting: solid, circles)
    (_run(alpha="iid"), _run(alpha="0.1"), False),
], ids=["init-pretrained", "init-warmup", "algorithm", "participation", "alpha"])
def test_runs_one_field_apart_differ_on_the_plane_and_in_the_legend(monkeypatch, a, b, same_colour):
    # Prepare
    surface = _trajectories({"run a": a, "run b": b})

    # Execute
    drawn, entries = _drawn_styles(monkeypatch, surface)

    # Assert: the legend shows each run as it is drawn; one setting's runs share its colour and differ in both marker
    # and line style, runs of two settings differ in colour
    style_a, style_b = drawn["run a"], drawn["run b"]
    assert entries["run a"] == style_a and entries["run b"] == style_b
    assert (style_a[0] == style_b[0]) == same_colour
    assert (style_a[1] != style_b[1]) == same_colour
    assert (style_a[2] != style_b[2]) == same_colour


@pytest.mark.parametrize("inits", [["random", "pretrained"], ["pretrained", "random"], ["warmup", "random"]])
def test_the_random_init_takes_the_plainest_styles_whatever_the_plane_s_order(inits):
    # Prepare: the plane's runs at alpha 0.1 in the order `inits`
    order = list(inits)
    groups, run_ids = np.array(order), np.array([_run(init=init) for init in inits])

    # Execute
    styles = figures.group_styles(order, groups, run_ids, ["iid", "0.1"])

    # Assert: the random init solid with circles, the other dashed with squares, both in alpha 0.1's colour
    other = next(init for init in inits if init != "random")
    assert styles["random"] == (PALETTE[1], "-", "o")
    assert styles[other] == (PALETTE[1], "--", "s")
