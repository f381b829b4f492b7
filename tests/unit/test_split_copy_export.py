"""Writing masked q/k/v copies back into the fused tensor they were split from (``modmask_lens.adapters.export``)."""

from __future__ import annotations

import pytest
import torch

from modmask_lens.adapters.export import SplitSource, _write_split_copy

FUSED = "attention.query_key_value.weight"


def _source(indices: list[int]) -> list[SplitSource]:
    return [SplitSource(FUSED, torch.arange(len(indices)), torch.tensor(indices))]


def test_each_element_lands_where_the_split_read_it():
    state = {FUSED: torch.zeros(6)}
    written = {}
    _write_split_copy("q", torch.tensor([1.0, 2.0]), _source([4, 1]), state, written)
    _write_split_copy("k", torch.tensor([3.0]), _source([0]), state, written)
    assert torch.equal(state[FUSED], torch.tensor([3.0, 2.0, 0.0, 0.0, 1.0, 0.0]))


def test_two_copies_of_one_fused_element_must_agree():
    """A fused element that two copies read (a key/value head shared by several copies) may be written twice only
    with one value; different masked values cannot both be exported."""
    state, written = {FUSED: torch.zeros(4)}, {}
    _write_split_copy("k", torch.tensor([5.0, 6.0]), _source([2, 3]), state, written)
    _write_split_copy("k_again", torch.tensor([5.0]), _source([2]), state, written)
    with pytest.raises(LookupError, match="v: masked copies disagree on an element of attention.query_key_value"):
        _write_split_copy("v", torch.tensor([0.0]), _source([3]), state, written)
    with pytest.raises(LookupError, match="masked copies disagree"):
        _write_split_copy("q", torch.tensor([1.0, 2.0]), _source([0, 0]), {FUSED: torch.zeros(4)}, {})
