"""`--set` overrides on nested config dicts, lists of tables included."""

import pytest

from featsep.config import ConfigError, apply_overrides


def test_overrides_reach_sections_and_list_entries():
    data = {"train": {"lr": 1e-3}, "penalties": [{"name": "temporal", "mode": "reference"}, {"name": "momentum"}]}
    apply_overrides(data, ["train.lr=3e-4", "penalties.0.mode=specified", "penalties.1.tau=0.5",
                           "eval.evals=[\"core\"]"])
    assert data == {"train": {"lr": 3e-4}, "eval": {"evals": ["core"]},
                    "penalties": [{"name": "temporal", "mode": "specified"}, {"name": "momentum", "tau": 0.5}]}


@pytest.mark.parametrize("override, message", [
    ("penalties.2.mode=x", r"'penalties' is a list of 2 entries; pick one by its index 0..1"),
    ("penalties.mode=x", r"'penalties' is a list of 2 entries"),
    ("train.lr.x=1", r"'train.lr' is a value, not a section"),
    ("tags.0.x=1", r"'tags.0' is a value, not a section"),
])
def test_bad_overrides_name_the_cause(override, message):
    data = {"train": {"lr": 1e-3}, "penalties": [{"name": "a"}, {"name": "b"}], "tags": ["x"]}
    with pytest.raises(ConfigError, match=message):
        apply_overrides(data, [override])
