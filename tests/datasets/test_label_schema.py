"""The label schema and NIH `Finding Labels` parsing."""

import math

import numpy as np
import pytest

from datasets.labels import (
    FINDINGS,
    LABELS,
    LabelError,
    any_from_findings,
    finding_labels_string,
    label_index,
    parse_finding_labels,
)

CASES = [
    ("No Finding", [], 0.0),
    ("Cardiomegaly|Effusion", ["Cardiomegaly", "Effusion"], 1.0),
    ("Infiltrate", ["Infiltration"], 1.0),  # BBox_List spelling
    ("pleural_thickening", ["Pleural_Thickening"], 1.0),
]


def test_schema():
    assert len(FINDINGS) == 14 and LABELS[-1] == "Any" and "Pleural_Thickening" in FINDINGS


@pytest.mark.parametrize("text, present, any_", CASES)
def test_parse(text, present, any_):
    vec = parse_finding_labels(text)
    assert vec.shape == (15,) and vec[-1] == any_
    assert [FINDINGS[i] for i in np.flatnonzero(vec[:14])] == present


@pytest.mark.parametrize("cell", [None, float("nan"), "", "  "])
def test_missing_cell_is_unknown(cell):
    assert np.isnan(parse_finding_labels(cell)).all()


def test_unknown_finding_names_valid_ones():
    with pytest.raises(LabelError, match="valid findings: Atelectasis"):
        parse_finding_labels("Cardiomegaly|Broken")


def test_any_with_unknowns():
    nan = math.nan
    got = any_from_findings(np.array([[0, nan, 1], [0, nan, 0], [0, 0, 0]]))
    assert got[0] == 1 and np.isnan(got[1]) and got[2] == 0


def test_round_trip_string_and_index():
    assert finding_labels_string(parse_finding_labels("Mass|Nodule")) == "Mass|Nodule"
    assert finding_labels_string(parse_finding_labels("No Finding")) == "No Finding"
    assert label_index("any") == 14
    with pytest.raises(LabelError, match="valid labels"):
        label_index("Covid")
