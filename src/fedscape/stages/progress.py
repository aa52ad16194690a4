"""What a resumable job's saved progress belongs to (`fedscape.fl.engine`: train and IID warm-up rounds, and the
pretraining epochs of `fedscape.stages.init`)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from fedscape.core.config import digest
from fedscape.core.fingerprints import file_sha256
from fedscape.data.locations import without_data_locations


def progress_key(settings: dict, inputs: Iterable[str | os.PathLike] = ()) -> str:
    """The key of a job's progress: its settings without the data's locations, and the contents of the files it
    starts from.

    Moving the data keeps the progress (a location is not meaning, `fedscape.data.specs.LOCATION_BASELINES`). A
    remade input does not, even where the job's own settings are unchanged: a train job's settings hold neither its
    init's settings nor its partition label's options, so a new init seed or model option reruns the init and then
    the run, which must start from the new model, not resume the rounds trained from the old one. An input remade
    with the same bytes (checkpoints and partitions are byte-reproducible on a CPU) keeps the progress.
    """
    return digest({"settings": without_data_locations(settings), "inputs": [file_sha256(path) for path in inputs]})
