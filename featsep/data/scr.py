"""SCR's two-attribute datasets (SAEBench evals/scr_and_tpp): how each looks and its frames.

`scr_frames(name, seed, local_copies)` gives (spec, train DataFrame, test DataFrame). Hub sets
are read as sparse probing reads them (featsep.data.probing): from the hub, or from a local
copy in the hub's format (a folder with train.* / test.*, or one file: its `split` column picks
the rows of each split; without one, 20% of the rows drawn with the seed are the test split).
The offline set is featsep.data.offline's bbc-news-byline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import featsep.data.hub as hub_data
from featsep.data.offline import BYLINE_GENDER_COLUMN, BYLINE_TOPIC_COLUMN, bbc_byline_frame
from featsep.data.probing import AMAZON_CATEGORIES, BIOS_PROFESSIONS
from featsep.data.registry import BYLINE_DATASET, DATASETS, SCR, HubSetParams
from featsep.data.tables import require_columns

SECTION = "scr"  # the settings hub errors name ({SECTION}.local_copies)
SAEBENCH_SIZES = (4000, 1000)  # train / test set sizes
SCR_CPU_SIZES = (400, 100)
SHARED_COPY_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ScrDatasetSpec:
    """How one two-attribute dataset looks: columns, the attribute-2 values (pos, neg), the
    attribute-1 pairs SAEBench uses, and how names map to stored column-1 values."""

    text_column: str
    column1: str
    column2: str
    column2_values: tuple  # (positive, negative), e.g. (male, female) as stored
    pairs: tuple[tuple[str, str], ...]
    column1_ids: dict[str, Any] = field(default_factory=dict)  # name -> stored value (when ints)
    hub_name: Optional[str] = None
    # default (train, test) set sizes on an accelerator: SAEBench's, unless the data's cells hold fewer texts
    gpu_sizes: tuple[int, int] = SAEBENCH_SIZES


def _ids(names: list[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


SCR_SPECS: dict[str, ScrDatasetSpec] = {
    # SAEBench dataset_info: gender male=0 female=1; professions by index in BIOS_PROFESSIONS
    "LabHC/bias_in_bios_class_set1": ScrDatasetSpec(
        "hard_text", "profession", "gender", (0, 1),
        (("professor", "nurse"), ("architect", "journalist"), ("surgeon", "psychologist"), ("attorney", "teacher")),
        _ids(BIOS_PROFESSIONS), "LabHC/bias_in_bios",
    ),
    "canrager/amazon_reviews_mcauley_1and5": ScrDatasetSpec(
        "text", "category", "rating", (1.0, 5.0),
        (("Books", "CDs_and_Vinyl"), ("Software", "Electronics"), ("Pet_Supplies", "Office_Products"),
         ("Industrial_and_Scientific", "Toys_and_Games")),
        _ids(AMAZON_CATEGORIES), "canrager/amazon_reviews_mcauley_1and5",
    ),
    # pairs (A, B): biased cells (A, male) and (B, female); these four are the ones whose
    # biased probe reads both attributes on gemma-3-270m (see featsep.data.offline).
    # Its biased cells hold ~600-800 texts: SAEBench's 4000 would not fit, so it keeps the
    # CPU sizes on any device.
    BYLINE_DATASET: ScrDatasetSpec(
        "text", BYLINE_TOPIC_COLUMN, BYLINE_GENDER_COLUMN, ("male", "female"),
        (("sports", "business"), ("politics", "tech"), ("entertainment", "business"), ("entertainment", "politics")),
        gpu_sizes=SCR_CPU_SIZES,
    ),
}


@DATASETS.loader(BYLINE_DATASET, SCR)
def byline_frames(name: str, seed: int, params: None):
    return bbc_byline_frame(seed=seed)


def hub_frames(name: str, seed: int, params: HubSetParams):
    """A hub set's train and test splits; a local copy is keyed by the SCR name or the hub's."""
    hub_name = SCR_SPECS[name].hub_name
    local = params.local_copies.get(name) or params.local_copies.get(hub_name)
    train, test, shared = hub_data.split_frames(hub_name, {hub_name: local} if local is not None else {}, SECTION)
    if shared:
        test = train.sample(frac=SHARED_COPY_TEST_FRACTION, random_state=seed)
        train = train.drop(test.index)
    return train, test


for _name in ("LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"):
    DATASETS.loader(_name, SCR)(hub_frames)


def scr_spec(name: str) -> ScrDatasetSpec:
    return SCR_SPECS[DATASETS.find(name, SCR).name]


def scr_frames(name: str, seed: int, local_copies: Optional[dict[str, str]] = None):
    """(spec, train DataFrame, test DataFrame) of a two-attribute dataset (see the module doc)."""
    entry = DATASETS.find(name, SCR)
    spec = SCR_SPECS[entry.name]
    params = entry.parse(local_copies=local_copies or {}) if entry.params is not None else entry.parse()
    train, test = DATASETS.load(name, SCR)(entry.name, seed, params)
    for df in (train, test):
        require_columns(name, [spec.text_column, spec.column1, spec.column2], df.columns,
                        f"a local copy of {name} needs the columns of {spec.hub_name}")
    return spec, train, test
