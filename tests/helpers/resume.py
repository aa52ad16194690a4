"""Killing a federated run after a chosen round, as a crash would, to test that it resumes."""

from __future__ import annotations

import pytest

from fedscape.fl import engine as engine_mod


def killed_after_round(monkeypatch, round_: int, run) -> None:
    """Call `run()` (a run_federated with a progress_dir) and kill it once round `round_` is saved."""
    real_save = engine_mod._Progress.save

    def save_then_kill(self, saved_round, *args):
        real_save(self, saved_round, *args)
        if saved_round == round_:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(engine_mod._Progress, "save", save_then_kill)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(engine_mod._Progress, "save", real_save)


def killed_at_call(monkeypatch, owner, name: str, call: int, run) -> list:
    """Call `run()` and kill it at the `call`-th call of `owner.name` (a part of a job: an analysis, a bend), as a
    crash would; then count the calls from there on: the returned list grows by one per call."""
    real, calls = getattr(owner, name), []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, killed)
    with pytest.raises(KeyboardInterrupt):
        run()
    calls.clear()
    monkeypatch.setattr(owner, name, lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    return calls
