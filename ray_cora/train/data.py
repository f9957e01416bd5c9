"""Training examples as a Ray Dataset: one read task per input file, streamed to the Ray Train workers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import ray.data

from ray_cora.data.records import BadRecords
from ray_cora.data.training import data_files, iter_examples


def _read_file_rows(row: dict[str, Any], *, kind: str) -> list[dict[str, str]]:
    bad = BadRecords("skip")  # the driver's scan already enforced the policy
    return [{"example": json.dumps(ex, ensure_ascii=False)} for ex in iter_examples([row["uri"]], kind, bad)]



def training_dataset(uris: Sequence[str], kind: str) -> Any:
    """A Ray Dataset of ``{"example": json}`` rows, one read task per input file (streamed to the
    workers; ``TorchTrainer`` splits it evenly between them)."""

    files = [f for uri in uris for f in data_files(uri)]
    return ray.data.from_items([{"uri": f} for f in files], override_num_blocks=max(1, len(files))) \
        .flat_map(_read_file_rows, fn_kwargs={"kind": kind})
