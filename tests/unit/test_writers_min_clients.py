"""A writers' proxy split (`datasets.<name>.proxy_split: writers`) of a `max_clients` read whose files hold no more
writers than max_clients: the reader reads them all and holds out round(proxy_fraction x writers) of them as without
max_clients (`data.sources._split_proxy_writers`), which can be none. Planning refuses the split where the data set's
published writers show it empty (a max_clients no smaller than their count); where only the files can tell, the init
that pretrains on it refuses it at its start, before any pretraining (`stages.init.proxy_data`)."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from types import SimpleNamespace

import pytest
from helpers.configs import problems_of
from helpers.papers import load
from helpers.words import write_reddit

from fedscape.data.sources import source_from_options
from fedscape.data.specs import DATASETS
from fedscape.plan.init import proxy_split_problem
from fedscape.stages.init import proxy_data

VOCAB = {"<PAD>": 0, "<UNK>": 1, "hi": 2, "there": 3, "ok": 4}


def _reddit(root, users: int) -> str:
    """A Reddit data_dir of `users` users, a comment each in train and test."""
    split = {"train": {f"u{u:02d}": [["hi", "there"]] for u in range(users)},
             "test": {f"u{u:02d}": [["hi", "ok"]] for u in range(users)}}
    return str(write_reddit(root, split, VOCAB, size=DATASETS["reddit"].num_classes))


@pytest.mark.parametrize(("max_clients", "proxy_fraction", "refused"), [
    (20, 0.04, True),  # round(0.04 x 20 / 0.96) = 1 writer after the first 20, but round(0.04 x 12) = 0 of the 12
    (12, 0.041, True),  # max_clients the published count: it too reads every writer
    (20, 0.042, False),  # round(0.042 x 12) = 1
    (11, 0.05, False),  # the files hold more writers than max_clients: the one after the first 11
    (12, 0.04, True),  # round(0.04 x 12 / 0.96) = round(0.5) = 0 after them, refused before as now
])
def test_planning_refuses_a_read_of_every_published_writer_whose_split_holds_none(tmp_path, monkeypatch, max_clients,
                                                                                 proxy_fraction, refused):
    # Prepare: Reddit's files holding the 12 users its publishers count
    monkeypatch.setitem(DATASETS, "reddit", replace(DATASETS["reddit"], published_writers=12))
    options = {"test_fraction": 0.25, "proxy_split": "writers", "data_dir": _reddit(tmp_path / "reddit", 12),
               "max_clients": max_clients, "proxy_fraction": proxy_fraction}

    # Execute
    problem = proxy_split_problem("reddit", options)
    source = source_from_options("reddit", options)

    # Assert: refused exactly where the reader's proxy holds no row, naming the setting; the least fraction the
    # message names holds a writer
    assert bool(problem) == refused == (len(source.proxy_index) == 0)
    if refused:
        assert re.match(r"the proxy split of reddit holds no writer .*proxy_fraction", problem)
        least = float(re.search(r"at least ([0-9.e-]+)[ ,]", problem).group(1))
        assert len(source_from_options("reddit", {**options, "proxy_fraction": least}).proxy_index) > 0


@pytest.mark.parametrize(("proxy_fraction", "refused"), [(3e-7, True), (3.1e-7, False)])
def test_the_config_check_refuses_it_in_a_shipped_config(proxy_fraction, refused):
    # Prepare: meta.yaml, whose pretrained init reads Reddit's writers' proxy split, reading every published user
    # (round(3e-7 x 1,660,820) = 0 of them; round(3e-7 x 2,000,000 / (1 - 3e-7)) = 1 after the first 2,000,000)
    config = copy.deepcopy(load("meta"))
    config["datasets"]["reddit"].update(max_clients=2_000_000, proxy_fraction=proxy_fraction)

    # Execute
    problems = problems_of(config)

    # Assert: the init's entry names the empty split, the published count and max_clients
    found = re.search(r"inits\.\w+: the proxy split of reddit holds no writer [^\n]*", problems)
    assert bool(found) == refused
    assert not refused or ("at most the 1660820 its publishers count; max_clients 2000000 reads them all: 0 for "
                           "proxy_fraction 3e-07" in found.group(0))


def test_a_split_only_the_files_show_empty_is_refused_at_the_init_job_s_start(tmp_path):
    # Prepare: 6 users in the files, below max_clients 20 (read whole) and Reddit's published count (which planning
    # cannot tell from the files): round(0.06 x 6) = 0 writers
    options = {"test_fraction": 0.25, "proxy_split": "writers", "data_dir": _reddit(tmp_path / "reddit", 6),
               "max_clients": 20, "proxy_fraction": 0.06}
    job = SimpleNamespace(dataset="reddit", proxy_dir=None, proxy_dataset=None, dataset_options=options)

    # Execute / Assert: planning passes it, and the init job refuses it before pretraining, naming the setting
    assert proxy_split_problem("reddit", options) == ""
    with pytest.raises(ValueError, match=r"the proxy split of reddit is empty: .*0 at proxy_fraction 0\.06, as its "
                                         r"files hold too few writers; set a higher datasets\.reddit\.proxy_fraction"):
        proxy_data(job)
