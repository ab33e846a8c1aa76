"""Bounded property-based fuzzing of every input kind (``fuzz_harness.KINDS``): no traceback, no result that differs
from the outcome table. ``tests/benchmarks/bench_reliability.py`` runs the same kinds with thousands of cases."""

from __future__ import annotations

import pytest
from fuzz_harness import FAILURES, KINDS, run_kind

EXAMPLES = {"config_values": 300, "images": 60, "truncated_images": 60, "masks": 60, "id_lists": 60,
            "json_files": 60, "sam_prompts": 60, "yolo_seg_labels": 40, "checkpoints": 60, "tflite": 60,
            "sha256_sidecars": 100}
"""Cases per kind in the quick suite (about 30 s in all on 2 CPU cores)."""


def test_every_kind_has_a_budget() -> None:
    assert set(EXAMPLES) == set(KINDS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_fuzzed_inputs_end_as_the_table_says(name: str, tmp_path) -> None:
    tally = run_kind(KINDS[name], EXAMPLES[name], tmp_path, random_seed=14)
    assert tally.total >= min(EXAMPLES[name], 20), tally.counts
    assert not tally.failed, "\n\n".join(tally.failures)
    assert set(tally.counts) - FAILURES, tally.counts  # something was actually exercised
