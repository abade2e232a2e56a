"""The bottom layer's one-line message helpers."""
from pathlib import Path

from utils.errors import first_few


def test_first_few_lists_the_first_items_and_counts_the_rest():
    assert first_few([]) == ""
    assert first_few(["a", "b"]) == "a, b"
    assert first_few([f"k{i}" for i in range(5)]) == "k0, k1, k2, k3, k4"
    assert first_few([f"k{i}" for i in range(7)]) == "k0, k1, k2, k3, k4 (+2 more)"
    assert first_few([Path("x/a.png"), Path("b.png"), 3], limit=2) == "x/a.png, b.png (+1 more)"
