"""MovieLens loaders for the three on-disk layouts, detected from the files in a folder.

- 100K:            u.data (tab separated), u.item ('|' separated, latin-1), u.genre
- 1M / 10M:        ratings.dat, movies.dat ('::' separated)
- latest/20M/25M/32M: ratings.csv, movies.csv (comma separated, header row)

Where the folder also has the users' demographics (100K: u.user, 1M: users.dat), they are loaded
for the per-group quality report (gender, age band, occupation); they never reach a model.

Every rating becomes one implicit interaction. Parsing takes pandas' fast path; only when it fails
do we re-scan the file line by line, so the error can name the exact file and line.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.errors import DataError

RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
_INT_COLUMNS = ("user_id", "item_id", "timestamp")

ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


@dataclass
class Dataset:
    """Ratings plus the item catalogue, with a record of what was skipped and why."""

    ratings: pd.DataFrame  # user_id, item_id (int64), rating (float32), timestamp (int64 seconds)
    items: pd.DataFrame  # item_id (int64), title (str), genres (str, '|' separated)
    layout: str
    files: list[Path] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    source_id: str | None = None  # set by loaders whose identity is not the files (snapshots)
    users: pd.DataFrame | None = None  # user_id, gender, age_band, occupation (when known)
    # Watch events (snapshots only), one row per (user, movie) the user watched but did not rate:
    # user_id, item_id (int64), timestamp (int64 seconds, the first watched minute), minutes.
    # A weaker implicit signal than a rating; None when the source has no watch events.
    watches: pd.DataFrame | None = None

    def snapshot_id(self) -> str:
        """The data identity recorded in a release: for files, a hash of names and bytes."""
        if self.source_id is not None:
            return self.source_id
        digest = hashlib.sha256()
        for path in sorted(self.files, key=lambda p: p.name):
            digest.update(path.name.encode())
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return f"movielens-{self.layout}-{digest.hexdigest()[:16]}"

    def stats(self) -> dict[str, int | str | dict[str, int]]:
        out: dict[str, int | str | dict[str, int]] = {
            "layout": self.layout,
            "ratings": len(self.ratings),
            "users": int(self.ratings["user_id"].nunique()),
            "items": int(self.ratings["item_id"].nunique()),
            "catalogue_items": len(self.items),
            "skipped": dict(self.skipped),
        }
        if self.watches is not None:  # absent for MovieLens: its stats stay as they were
            out["watch_pairs"] = len(self.watches)
            out["watch_users"] = int(self.watches["user_id"].nunique())
            out["watch_items"] = int(self.watches["item_id"].nunique())
            out["watch_minutes"] = int(self.watches["minutes"].sum())
        return out

    def user_groups(self, user_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Per demographic grouping, each user's label ('' = unknown), aligned with `user_ids`."""
        if self.users is None:
            return {}
        table = self.users.set_index("user_id").reindex(np.asarray(user_ids, dtype=np.int64))
        return {
            column: table[column].fillna("").astype(str).to_numpy(dtype=object)
            for column in USER_GROUPINGS
        }


USER_GROUPINGS = ("gender", "age_band", "occupation")
# The ML-1M age codes, used as bands for both layouts: code -> band name
AGE_BANDS = {1: "<18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
ML1M_OCCUPATIONS = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
]


def age_band(age: int) -> str:
    """The ML-1M band an age falls in (its lower bound is the band's code)."""
    code = max((c for c in AGE_BANDS if c <= age), default=1)
    return AGE_BANDS[code]


@dataclass(frozen=True)
class _Layout:
    name: str
    ratings_file: str
    items_file: str
    sep: str
    header: bool


_LAYOUTS = [
    _Layout("ml-100k", "u.data", "u.item", "\t", header=False),
    _Layout("ml-1m", "ratings.dat", "movies.dat", "::", header=False),
    _Layout("ml-latest", "ratings.csv", "movies.csv", ",", header=True),
]


def detect_layout(folder: Path) -> _Layout:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory (expected a MovieLens folder)")
    for layout in _LAYOUTS:
        if (folder / layout.ratings_file).is_file():
            return layout
    wanted = ", ".join(lay.ratings_file for lay in _LAYOUTS)
    raise DataError(f"{folder}: no MovieLens ratings file found (looked for {wanted})")


def load_movielens(folder: str | Path) -> Dataset:
    """Load any supported MovieLens layout from `folder`."""
    folder = Path(folder)
    layout = detect_layout(folder)
    ratings_path = folder / layout.ratings_file
    items_path = folder / layout.items_file
    if not items_path.is_file():
        raise DataError(f"{items_path}: missing (the {layout.name} layout needs it for titles)")
    ratings = _read_ratings(ratings_path, layout)
    items = _read_items(items_path, layout)
    files = [ratings_path, items_path]
    dataset = _clean(ratings, items, layout.name, files)
    dataset.users = _read_users(folder, layout)
    return dataset


def _read_users(folder: Path, layout: _Layout) -> pd.DataFrame | None:
    """Demographics when the layout ships them (100K u.user, 1M users.dat); None otherwise."""
    name = {"ml-100k": "u.user", "ml-1m": "users.dat"}.get(layout.name)
    if name is None or not (folder / name).is_file():
        return None
    path = folder / name
    text = path.read_bytes().decode("latin-1")
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|" if layout.name == "ml-100k" else "::")
        try:
            if layout.name == "ml-100k":  # id|age|gender|occupation|zip
                user_id, age, gender, occupation = int(fields[0]), int(fields[1]), *fields[2:4]
            else:  # id::gender::age code::occupation code::zip
                user_id, gender, age = int(fields[0]), fields[1], int(fields[2])
                occupation = ML1M_OCCUPATIONS[int(fields[3])]
        except (ValueError, IndexError):
            raise DataError(f"{path}:{lineno}: not a user line: {line!r:.80}") from None
        rows.append((user_id, gender.strip(), age_band(age), occupation.strip()))
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["user_id", *USER_GROUPINGS]).astype({"user_id": "int64"})


def _clean(ratings: pd.DataFrame, items: pd.DataFrame, layout: str, files: list[Path]) -> Dataset:
    """Drop rows that cannot become interactions, counting each reason."""
    skipped: dict[str, int] = {}
    known = ratings["item_id"].isin(items["item_id"])
    if not known.all():
        skipped["item_not_in_catalogue"] = int((~known).sum())
        ratings = ratings[known]
    # A user who rated the same movie twice keeps the latest rating: one interaction per pair.
    ratings = ratings.sort_values(["user_id", "item_id", "timestamp"], kind="stable")
    dup = ratings.duplicated(["user_id", "item_id"], keep="last")
    if dup.any():
        skipped["duplicate_user_item"] = int(dup.sum())
        ratings = ratings[~dup]
    ratings = ratings.reset_index(drop=True)
    return Dataset(ratings=ratings, items=items, layout=layout, files=files, skipped=skipped)


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path}: file is empty")
    return data


def _read_ratings(path: Path, layout: _Layout) -> pd.DataFrame:
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8/ASCII text ({exc.reason})") from None
    if layout.sep == "::":
        text = text.replace("::", "\t")
    sep = "\t" if layout.sep in ("\t", "::") else ","
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=0 if layout.header else None,
            names=RATING_COLUMNS,
            usecols=range(4),
            dtype={
                "user_id": "int64",
                "item_id": "int64",
                "rating": "float64",
                "timestamp": "int64",
            },
            engine="c",
        )
    except (ValueError, OverflowError, pd.errors.ParserError) as exc:
        raise _diagnose_ratings(path, text, sep, layout.header, str(exc)) from None
    if frame.isna().any().any():
        raise _diagnose_ratings(path, text, sep, layout.header, "missing values")
    if len(frame) == 0:
        raise DataError(f"{path}: no rating rows")
    if (frame["user_id"] <= 0).any() or (frame["item_id"] <= 0).any():
        bad = int(np.flatnonzero((frame["user_id"] <= 0) | (frame["item_id"] <= 0))[0])
        raise DataError(f"{path}:{bad + 1 + int(layout.header)}: ids must be positive integers")
    frame["rating"] = frame["rating"].astype("float32")
    return frame


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _diagnose_ratings(path: Path, text: str, sep: str, header: bool, why: str) -> DataError:
    """Find the first line pandas choked on, so the message can point at it."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if header and lineno == 1:
            continue
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < 4:
            return DataError(
                f"{path}:{lineno}: expected 4 fields, found {len(fields)}: {line!r:.80}"
            )
        for name, value in zip(RATING_COLUMNS, fields[:4], strict=True):
            try:
                number = int(value) if name in _INT_COLUMNS else float(value)
            except ValueError:
                return DataError(f"{path}:{lineno}: {name} is not a number: {value!r:.40}")
            if name in _INT_COLUMNS and not _INT64_MIN <= number <= _INT64_MAX:
                return DataError(f"{path}:{lineno}: {name} does not fit in 64 bits: {value!r:.40}")
    return DataError(f"{path}: could not parse ratings ({why})")


def _read_items(path: Path, layout: _Layout) -> pd.DataFrame:
    raw = _read_bytes(path)
    if layout.name == "ml-latest":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DataError(f"{path}:{line}: not valid UTF-8 ({exc.reason})") from None
        try:
            frame = pd.read_csv(io.StringIO(text), dtype={"movieId": "int64"})
        except (ValueError, pd.errors.ParserError) as exc:
            raise DataError(f"{path}: could not parse movies ({exc})") from None
        missing = {"movieId", "title", "genres"} - set(frame.columns)
        if missing:
            raise DataError(f"{path}:1: header lacks columns {sorted(missing)}")
        frame = frame.rename(columns={"movieId": "item_id"})[["item_id", "title", "genres"]]
        return frame.fillna({"title": "", "genres": ""})
    # 100K and 1M catalogues are latin-1 (GroupLens' own README says so); 10M is UTF-8.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    sep = "|" if layout.name == "ml-100k" else "::"
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        min_fields = 5 + len(ML100K_GENRES) if layout.name == "ml-100k" else 3
        if len(fields) < min_fields:
            raise DataError(f"{path}:{lineno}: expected {min_fields} fields, found {len(fields)}")
        try:
            item_id = int(fields[0])
        except ValueError:
            raise DataError(
                f"{path}:{lineno}: movie id is not a number: {fields[0]!r:.40}"
            ) from None
        if layout.name == "ml-100k":
            flags = fields[5 : 5 + len(ML100K_GENRES)]
            genres = "|".join(g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1")
        else:
            genres = fields[2]
        rows.append((item_id, fields[1], genres))
    if not rows:
        raise DataError(f"{path}: no movie rows")
    return pd.DataFrame(rows, columns=["item_id", "title", "genres"]).astype({"item_id": "int64"})


def load_snapshots(
    uri: str,
    since: str | None = None,
    until: str | None = None,
    catalogue: str | Path | None = None,
) -> Dataset:
    """Rate and watch events (of any topic) from ingestor snapshots dated within [since, until].

    Rows are deduplicated by (topic, partition, offset), so a replayed window never counts an
    event twice. Watch events (one per minute watched) collapse to one row per (user, movie) at
    the first minute's time, and a pair the user also rated keeps only the rating (the stronger
    signal): they become `Dataset.watches`. Titles come from a MovieLens folder when `catalogue`
    is given; events for movies outside it are dropped and counted.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ingestor.snapshot import list_snapshots, snapshot_id
    from model_registry.storage import open_store

    store = open_store(uri)
    files = list_snapshots(store, None, since, until)
    if not files:
        raise DataError(f"{uri}: no snapshots between {since or 'start'} and {until or 'end'}")
    columns = ["topic", "partition", "offset", "kind", "user_id", "movie_id", "rating", "ts"]
    tables = []
    for f in files:
        try:
            table = pq.read_table(io.BytesIO(store.get(f.key)), columns=[*columns, "minute"])
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{store.uri}/{f.key}: unreadable snapshot ({exc})") from None
        tables.append(table)
    events = pa.concat_tables(tables).to_pandas()
    frame = events[events["kind"] == "rate"]
    watched = events[events["kind"] == "watch"]
    if frame.empty:
        why = f" ({len(watched)} watch events, but training is evaluated on ratings)"
        raise DataError(f"{uri}: the snapshots hold no rate events" + (why if len(watched) else ""))
    before = len(frame)
    frame = frame.drop_duplicates(["topic", "partition", "offset"])
    ratings = pd.DataFrame(
        {
            "user_id": frame["user_id"].astype("int64"),
            "item_id": frame["movie_id"].astype("int64"),
            "rating": frame["rating"].astype("float32"),
            "timestamp": frame["ts"].astype("int64") // 1000,
        }
    )
    if catalogue is not None:
        items = _read_items(*_items_file(Path(catalogue)))
    else:  # ids only; a movie only ever watched is still a movie
        ids = np.union1d(ratings["item_id"].to_numpy(), watched["movie_id"].to_numpy(np.int64))
        items = pd.DataFrame({"item_id": ids, "title": "", "genres": ""})
    dataset = _clean(ratings, items, "snapshots", [])
    if before > len(frame):
        dataset.skipped["duplicate_offset"] = before - len(frame)
    if len(watched):
        dataset.watches = _watch_pairs(watched, dataset)
    dataset.source_id = snapshot_id(store, files)
    return dataset


def _watch_pairs(events: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """Per-minute watch events -> one row per (user, movie) not rated, counting what was dropped."""
    skipped = dataset.skipped
    before = len(events)
    events = events.drop_duplicates(["topic", "partition", "offset"])
    if before > len(events):
        skipped["watch_duplicate_offset"] = before - len(events)
    known = events["movie_id"].isin(dataset.items["item_id"])
    if not known.all():
        skipped["watch_item_not_in_catalogue"] = int((~known).sum())
        events = events[known]
    pairs = (
        pd.DataFrame(
            {
                "user_id": events["user_id"].astype("int64"),
                "item_id": events["movie_id"].astype("int64"),
                "ts": events["ts"].astype("int64"),
                "minute": events["minute"],
            }
        )
        .groupby(["user_id", "item_id"], sort=True)
        .agg(ts=("ts", "min"), minutes=("minute", "nunique"))
        .reset_index()
    )
    rated = pd.MultiIndex.from_frame(dataset.ratings[["user_id", "item_id"]])
    also_rated = pd.MultiIndex.from_frame(pairs[["user_id", "item_id"]]).isin(rated)
    if also_rated.any():
        skipped["watch_pair_also_rated"] = int(also_rated.sum())
        pairs = pairs[~also_rated]
    return pd.DataFrame(
        {
            "user_id": pairs["user_id"].to_numpy(np.int64),
            "item_id": pairs["item_id"].to_numpy(np.int64),
            "timestamp": pairs["ts"].to_numpy(np.int64) // 1000,
            "minutes": pairs["minutes"].to_numpy(np.int64),
        }
    )


def _items_file(folder: Path) -> tuple[Path, _Layout]:
    layout = detect_layout(folder)
    return folder / layout.items_file, layout
