"""`python -m ingestor` with bad settings, bad flags, unreachable brokers and hostile stores."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingestor.__main__ import load_catalogue, main
from ingestor.settings import IngestSettings, parse_topics
from model_registry.errors import RegistryError
from tests.helpers import REPO, build_release, free_port


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INGEST_BATCH_SIZE": "-1"}, "batch_size"),
        ({"INGEST_TOPICS": "rate=ratings"}, "unknown kind 'ratings'"),
        ({"INGEST_TOPICS": " , "}, "no topics given"),
        ({"INGEST_TOPICS": "=rate"}, "empty topic name"),
        ({"INGEST_FLUSH_SECONDS": "0"}, "flush_seconds"),
        ({"INGEST_METRICS_PORT": "70000"}, "metrics_port"),
        ({"INGEST_DLQ": "s3"}, "dlq"),
        ({"INGEST_DLQ_SUFFIX": "x" * 500}, "dlq_suffix"),
        ({"INGEST_BATCH_SIZE": "1e9999"}, "batch_size"),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid settings") and message in err
    assert err.count("\n") == 1 and "errors.pydantic.dev" not in err  # one line, no dump


def test_topic_kinds() -> None:
    assert parse_topics("ratings=rate, watch ,") == {"ratings": "rate", "watch": "watch"}
    assert IngestSettings(topics="r=rate").topic_kinds() == {"r": "rate"}


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--dlq", "s3"],
        ["run", "--batch-size", "many"],
        ["snapshots"],  # --store is required
        ["snapshots", "--store", "file:///tmp/x", "--since", "yesterday"],
        ["snapshots", "--store", "file:///tmp/x", "--until", "2026-02-30"],
        ["snapshots", "--store", "file:///tmp/x", "--since", "2026-01-01T00:00"],
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error: " in capsys.readouterr().err.splitlines()[-1]


def test_unreachable_brokers_exit_1_with_one_line(tmp_path: Path) -> None:
    env = {
        "PATH": "",
        "INGEST_BROKERS": f"127.0.0.1:{free_port()}",  # nothing listens there
        "INGEST_STORE": (tmp_path / "events").as_uri(),
        "INGEST_BOOTSTRAP_TIMEOUT_MS": "500",
    }
    out = subprocess.run(
        [sys.executable, "-m", "ingestor"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "error: cannot reach Kafka at 127.0.0.1:" in out.stderr
    assert "Traceback" not in out.stderr


def test_snapshots_of_an_unsupported_or_hostile_store(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["snapshots", "--store", "ftp://host/x"]) == 2
    assert "unsupported store" in capsys.readouterr().err
    # Files that merely look like snapshots (wrong names, escapes) are not counted.
    root = tmp_path / "events"
    for name in (
        "snapshots/rate/date=2026-01-01/notes.txt",
        "snapshots/rate/date=bad/part-00000-1-2.parquet",
        "snapshots/rate/part-00000-00000000000000000001-00000000000000000002.parquet",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not parquet")
    assert main(["snapshots", "--store", root.as_uri(), "--json"]) == 0
    assert '"files": 0' in capsys.readouterr().out


@pytest.mark.parametrize("brokers", ["", " , ", "kafka", "kafka:99999", "kafka:９０９２"])
def test_bad_brokers_fail_at_once_with_one_line(
    brokers: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    started = time.monotonic()
    assert main(["run", "--brokers", brokers, "--store", (tmp_path / "e").as_uri()]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid settings: brokers") and err.count("\n") == 1
    assert time.monotonic() - started < 5  # not after a 20-30 s bootstrap timeout
    assert not (tmp_path / "e").exists()


def test_read_only_commands_create_no_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = tmp_path / "no" / "such" / "store"
    assert main(["snapshots", "--store", store.as_uri()]) == 0
    assert "0 files" in capsys.readouterr().out
    assert not (tmp_path / "no").exists()


def test_catalogue_is_read_through_its_hashes(tmp_path: Path) -> None:
    registry_uri = (tmp_path / "registry").as_uri()
    version = build_release(registry_uri, n_users=5, n_items=4)
    assert load_catalogue(registry_uri).resolve("Movie 3") == 3
    # A catalogue changed after publishing no longer matches its sha256: refused, one line.
    path = tmp_path / "registry" / version / "vocab" / "catalogue.json"
    path.write_text(json.dumps({"3": {"title": "Changed"}}))
    with pytest.raises(RegistryError, match="does not match its sha256"):
        load_catalogue(registry_uri)


def test_a_catalogue_file_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.json"
    for content in ("[1, 2]", '{"1": "Title"}', "not json", '{"1": {"title": 5}}'):
        path.write_text(content)
        with pytest.raises(RegistryError, match="catalogue"):
            load_catalogue(str(path))
