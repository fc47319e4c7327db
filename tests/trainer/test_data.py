"""All three MovieLens layouts, written by the tests, and every kind of malformed input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import GENRE_FLAGS
from trainer.data import load_movielens
from trainer.errors import DataError


def _ml1m(folder: Path, ratings: str, movies: str | bytes) -> Path:
    folder.mkdir()
    (folder / "ratings.dat").write_text(ratings)
    if isinstance(movies, bytes):
        (folder / "movies.dat").write_bytes(movies)
    else:
        (folder / "movies.dat").write_text(movies)
    return folder


def _latest(folder: Path, ratings: str, movies: str) -> Path:
    folder.mkdir()
    (folder / "ratings.csv").write_text(ratings)
    (folder / "movies.csv").write_text(movies)
    return folder


def _ml100k(folder: Path, ratings: str, items: str | None = None) -> Path:
    folder.mkdir()
    (folder / "u.data").write_text(ratings)
    (folder / "u.item").write_text(
        items
        if items is not None
        else f"1|Toy Story (1995)|x||u|{GENRE_FLAGS}\n"
        f"2|GoldenEye (1995)|x||u|0|1|1|{'|'.join(['0'] * 16)}\n"
    )
    return folder


def test_ml100k_layout(tmp_path: Path) -> None:
    ds = load_movielens(_ml100k(tmp_path / "d", "1\t1\t5\t100\n1\t2\t3\t200\n2\t2\t4\t150\n"))
    assert ds.layout == "ml-100k"
    assert ds.ratings[["user_id", "item_id", "timestamp"]].values.tolist() == [
        [1, 1, 100],
        [1, 2, 200],
        [2, 2, 150],
    ]
    assert ds.items.set_index("item_id").loc[2, "genres"] == "Action|Adventure"
    assert ds.items.set_index("item_id").loc[1, "title"] == "Toy Story (1995)"


def test_ml1m_layout_latin1_titles(tmp_path: Path) -> None:
    movies = "1::Toy Story (1995)::Animation|Children's\n2::Cité des enfants (1995)::Sci-Fi\n"
    ds = load_movielens(
        _ml1m(tmp_path / "d", "1::1::5::978300760\n1::2::3::978302109\n", movies.encode("latin-1"))
    )
    assert ds.layout == "ml-1m" and len(ds.ratings) == 2
    assert ds.items.set_index("item_id").loc[2, "title"] == "Cité des enfants (1995)"
    assert ds.items.set_index("item_id").loc[1, "genres"] == "Animation|Children's"


def test_latest_csv_layout_with_quoted_titles(tmp_path: Path) -> None:
    ds = load_movielens(
        _latest(
            tmp_path / "d",
            "userId,movieId,rating,timestamp\n1,1,4.5,964982703\n2,3,0.5,964981247\n",
            'movieId,title,genres\n1,"Toy Story (1995)",Animation\n'
            '3,"American President, The (1995)",'
            "Comedy|Drama\n",
        )
    )
    assert ds.layout == "ml-latest"
    assert ds.ratings["rating"].tolist() == [4.5, 0.5]
    assert ds.items.set_index("item_id").loc[3, "title"] == "American President, The (1995)"


def test_duplicates_and_unknown_items_are_counted_not_silently_dropped(tmp_path: Path) -> None:
    ds = load_movielens(_ml100k(tmp_path / "d", "1\t1\t5\t100\n1\t1\t2\t300\n1\t9\t3\t200\n"))
    assert ds.skipped == {"item_not_in_catalogue": 1, "duplicate_user_item": 1}
    assert ds.ratings[["item_id", "rating", "timestamp"]].values.tolist() == [[1, 2, 300]]
    assert ds.stats()["skipped"] == ds.skipped


@pytest.mark.parametrize(
    ("ratings", "where", "why"),
    [
        ("1\t1\t5\t100\n2\t2\n", ":2:", "expected 4 fields"),
        ("1\t1\t5\t100\nabc\t1\t5\t100\n", ":2:", "user_id is not a number"),
        ("1\t1\t5\t100\n1\t1\tfive\t100\n", ":2:", "rating is not a number"),
        ("1\t1\t5\t100\n1\t1\t5\t100\n0\t1\t5\t1\n", ":3:", "positive"),
    ],
)
def test_malformed_ratings_name_file_and_line(
    tmp_path: Path, ratings: str, where: str, why: str
) -> None:
    with pytest.raises(DataError) as err:
        load_movielens(_ml100k(tmp_path / "d", ratings))
    assert "u.data" in str(err.value) and where in str(err.value) and why in str(err.value)


def test_missing_column_in_csv_header(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ratings.csv:3: expected 4 fields"):
        load_movielens(
            _latest(
                tmp_path / "d",
                "userId,movieId,rating,timestamp\n1,1,4,5\n1,2\n",
                "movieId,title,genres\n1,a,b\n",
            )
        )
    with pytest.raises(DataError, match=r"movies.csv:1: header lacks columns \['genres'\]"):
        load_movielens(
            _latest(
                tmp_path / "e", "userId,movieId,rating,timestamp\n1,1,4,5\n", "movieId,title\n1,a\n"
            )
        )


def test_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"u.data: file is empty"):
        load_movielens(_ml100k(tmp_path / "d", ""))
    with pytest.raises(DataError, match=r"u.item: file is empty"):
        load_movielens(_ml100k(tmp_path / "e", "1\t1\t5\t100\n", items="\n"))


def test_wrong_encoding_names_the_line(tmp_path: Path) -> None:
    folder = _ml100k(tmp_path / "d", "")
    (folder / "u.data").write_bytes(b"1\t1\t5\t100\n1\t2\t\xff\xfe\t100\n")
    with pytest.raises(DataError, match=r"u.data:2: not valid UTF-8"):
        load_movielens(folder)
    latest = _latest(tmp_path / "e", "userId,movieId,rating,timestamp\n1,1,4,5\n", "")
    (latest / "movies.csv").write_bytes(b"movieId,title,genres\n1,Caf\xe9,Drama\n")
    with pytest.raises(DataError, match=r"movies.csv:2: not valid UTF-8"):
        load_movielens(latest)


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_movielens(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MovieLens ratings file"):
        load_movielens(tmp_path / "empty")
    (tmp_path / "noitems").mkdir()
    (tmp_path / "noitems" / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(DataError, match=r"u.item: missing"):
        load_movielens(tmp_path / "noitems")


def test_bad_item_rows(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"u.item:1: expected 24 fields"):
        load_movielens(_ml100k(tmp_path / "d", "1\t1\t5\t1\n", items="1|short\n"))
    with pytest.raises(DataError, match=r"movies.dat:2: movie id is not a number"):
        load_movielens(_ml1m(tmp_path / "e", "1::1::5::1\n", "1::A::B\nx::A::B\n"))


def test_snapshot_id_tracks_file_bytes(tmp_path: Path) -> None:
    a = load_movielens(_ml100k(tmp_path / "a", "1\t1\t5\t100\n"))
    b = load_movielens(_ml100k(tmp_path / "b", "1\t1\t5\t100\n"))
    c = load_movielens(_ml100k(tmp_path / "c", "1\t1\t4\t100\n"))
    assert a.snapshot_id() == b.snapshot_id() != c.snapshot_id()
    assert a.snapshot_id().startswith("movielens-ml-100k-")


def test_real_ml100k_loads_whole(ml100k_dir: Path) -> None:
    ds = load_movielens(ml100k_dir)
    assert ds.stats()["ratings"] == 100_000 and ds.stats()["users"] == 943
    assert ds.stats()["items"] == 1682 and ds.skipped == {}
