"""Label and field selectors (streamsrv/selectors.py)."""

from __future__ import annotations

import pytest

from streamsrv.selectors import UnsupportedField, fields_match, matches_labels, parse_field_selector


@pytest.mark.parametrize(
    ("selector", "want"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app!=web", False),
        ("app=db", False),
        ("tier", True),
        ("!tier", False),
        ("missing", False),
        ("!missing", True),
        ("app=web, tier=front", True),
        ("app=web,tier=back", False),
    ],
)
def test_label_selectors(selector: str, want: bool) -> None:
    assert matches_labels({"app": "web", "tier": "front"}, selector) is want


def test_field_selectors() -> None:
    known = ("metadata.name", "status.phase")
    terms = parse_field_selector("metadata.name=a, status.phase!=Failed", known)
    assert terms == [("metadata.name", "a", False), ("status.phase", "Failed", True)]
    assert fields_match({"metadata.name": "a", "status.phase": "Running"}, terms)
    assert not fields_match({"metadata.name": "a", "status.phase": "Failed"}, terms)
    assert not fields_match({"metadata.name": "b", "status.phase": "Running"}, terms)
    assert parse_field_selector("metadata.name==a", known) == [("metadata.name", "a", False)]
    with pytest.raises(UnsupportedField) as err:
        parse_field_selector("metadata.name=a,spec.bogus=1", known)
    assert str(err.value) == 'field label not supported: "spec.bogus"'
