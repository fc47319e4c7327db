"""Demographics for the per-group report: read from u.user / users.dat, optional, strict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import synthetic_ratings, write_ml100k
from trainer.data import age_band, load_movielens
from trainer.errors import DataError


def test_age_bands_follow_the_ml1m_codes() -> None:
    assert [age_band(a) for a in (7, 17, 18, 24, 25, 44, 45, 50, 55, 56, 73)] == [
        "<18", "<18", "18-24", "18-24", "25-34", "35-44", "45-49", "50-55", "50-55", "56+", "56+"
    ]  # fmt: skip


def test_ml100k_users_become_groups_aligned_with_the_ids_asked(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "d", synthetic_ratings(n_users=3), n_items=40)
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    ds = load_movielens(folder)
    groups = ds.user_groups(np.array([2, 3, 1]))
    assert groups["gender"].tolist() == ["F", "", "M"]  # user 3 has no line: unknown
    assert groups["age_band"].tolist() == ["50-55", "", "18-24"]
    assert groups["occupation"].tolist() == ["other", "", "technician"]


def test_ml1m_users_decode_age_and_occupation_codes(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::2::5::978300760\n2::2::3::978300761\n")
    (folder / "movies.dat").write_text("2::Jumanji (1995)::Adventure\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    groups = load_movielens(folder).user_groups(np.array([1, 2]))
    assert groups["age_band"].tolist() == ["<18", "56+"]
    assert groups["occupation"].tolist() == ["K-12 student", "self-employed"]


def test_no_users_file_means_no_demographic_groups(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "d", synthetic_ratings(n_users=3), n_items=40)
    assert load_movielens(folder).user_groups(np.array([1])) == {}


def test_a_malformed_users_line_names_file_and_line(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "d", synthetic_ratings(n_users=3), n_items=40)
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|old|F|other|94043\n")
    with pytest.raises(DataError, match=r"u\.user:2: not a user line"):
        load_movielens(folder)
