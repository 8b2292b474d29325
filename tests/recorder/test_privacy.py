"""The one rule for comparing phone numbers (recorder.privacy), table-tested."""

from __future__ import annotations

import pytest

from recorder.privacy import number_key, number_matches


@pytest.mark.parametrize("number, key", [
    ("01632960123", "01632960123"),
    ("01632 960123", "01632960123"),
    ("01632 960 123", "01632960123"),
    ("(01632) 960-123", "01632960123"),
    ("0163.296.0123", "01632960123"),
    ("+441632960123", "01632960123"),
    ("+44 1632 960123", "01632960123"),
    ("+44 (0)1632 960123", "01632960123"),
    ("0044 1632 960123", "01632960123"),
    ("00441632960123", "01632960123"),
    ("+33 1 23 45 67 89", "0033123456789"),      # another country: international form
    ("0033123456789", "0033123456789"),
    ("999", "999"),
    ("", ""), (None, ""), ("withheld", ""), ("unavailable", ""), ("0163x960123", ""),
    ("+", ""), ("+44", "0"),
])
def test_number_key(number, key):
    assert number_key(number) == key


@pytest.mark.parametrize("personal, number, match", [
    ({"caller_number": "01632960123"}, "+44 1632 960123", True),
    ({"caller_number": "01632960123"}, "01632 960123", True),
    ({"caller_number": "01632960123"}, "01632960124", False),
    ({"dialled_digits": "01632960456"}, "0044 1632 960456", True),
    ({"caller_number": "01632960123", "dialled_digits": None}, "01632960456", False),
    ({"caller_number": "withheld"}, "withheld", False),   # an absence is not a number
    ({"caller_number": None, "dialled_digits": None}, "", False),
    ({"caller_name": "01632960123"}, "01632960123", False),   # names are not searched
])
def test_number_matches(personal, number, match):
    assert number_matches(personal, number) is match
