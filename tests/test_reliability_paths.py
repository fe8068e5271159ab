"""Ids from users and plan files can never escape the output folder."""

from __future__ import annotations

import os

import pytest

from iunet_nb.errors import ConfigError
from iunet_nb.io.paths import MAX_ID_LENGTH, check_id, safe_join


@pytest.mark.parametrize("good", ["case07", "reader_2", "r1.v2", "A-b_c.9", "0", "x" * MAX_ID_LENGTH])
def test_good_ids_pass_unchanged(good):
    assert check_id(good) == good


@pytest.mark.parametrize("bad, match", [
    ("..", r"path separator or '\.\.'"),
    ("../../etc/passwd", r"path separator or '\.\.'"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("/abs", "path separator"),
    ("C:evil", "not a valid id"),
    ("x..y", r"'\.\.'"),
    ("nul\x00byte", "path separator"),
    (".hidden", "starting with a letter or digit"),
    ("-flag", "starting with a letter or digit"),
    ("sp ace", "not a valid id"),
    ("caf\u00e9", "not a valid id"),
    ("", "is empty"),
    ("x" * (MAX_ID_LENGTH + 1), f"use at most {MAX_ID_LENGTH}"),
    ("CON", "device name"),
    ("nul.txt", "device name"),
    ("trailing.", "device name such as 'CON' or a trailing"),
    (7, "must be a string, got int"),
    (None, "must be a string"),
])
def test_bad_ids_refused_with_what_to_do(bad, match):
    with pytest.raises(ConfigError, match=match):
        check_id(bad, "case id")


def test_safe_join_stays_inside_root(tmp_path):
    root = tmp_path / "out"
    assert safe_join(root, "r1", "case07") == root / "r1" / "case07"
    for parts in (("..", "x"), ("r1", "../../x"), ("/etc",)):
        with pytest.raises(ConfigError, match="path separator"):
            safe_join(root, *parts)
    with pytest.raises(ConfigError, match="at least one"):
        safe_join(root)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_safe_join_refuses_a_link_out_of_the_root(tmp_path):
    root = tmp_path / "out"
    (root / "r1").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "r1" / "case07").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"outside the output folder.*remove the link"):
        safe_join(root, "r1", "case07")
    # a link that stays inside the root is fine
    (root / "r1" / "alias").symlink_to(root / "r1")
    assert safe_join(root, "r1", "alias") == root / "r1" / "alias"
