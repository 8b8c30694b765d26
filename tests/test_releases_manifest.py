"""The manifest and landmark-file parsers: strict on purpose, and ReleaseError is all that escapes."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn.protocol.errors import ReleaseError
from cairn.releases.manifest import check_release_dir, manifest_bytes, parse_landmarks_ref, parse_manifest, write_manifest
from cairn.releases.version import ReleaseVersion

HEX = "ab" * 32
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def valid_document() -> dict:
    return {
        "version": "1.2.3",
        "parent_version": "1.2.2",
        "run_id": "run-7",
        "global_step": 4200,
        "landmarks_version": 2,
        "landmarks_digest": HEX,
        "files": {name: {"sha256": HEX, "length": 10} for name in ("model.safetensors", "config.json", "tokenizer.json", "landmarks.json")},
        "metrics": {"loss": 0.25, "simlex": {"spearman": 0.41}},
        "compatibility": {"protocol": 1},
        "notes": "kept as an extra field",
    }


def encode(document: object) -> bytes:
    return json.dumps(document).encode("utf-8")


def test_valid_manifest_round_trips(tmp_path: Path):
    manifest = parse_manifest(encode(valid_document()))
    assert manifest.version == ReleaseVersion(1, 2, 3) and manifest.parent_version == ReleaseVersion(1, 2, 2)
    assert manifest.extra == {"notes": "kept as an extra field"}
    write_manifest(manifest, tmp_path / "manifest.json")
    assert parse_manifest((tmp_path / "manifest.json").read_bytes()) == manifest
    assert manifest_bytes(parse_manifest(manifest_bytes(manifest))) == manifest_bytes(manifest)


def _without(key: str) -> dict:
    document = valid_document()
    del document[key]
    return document


def _with(path: tuple[str, ...], value: object) -> dict:
    document = valid_document()
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"[" * 100_000, "nested too deeply|not valid JSON"),
        (b'{"version": "1.0.0", "version": "2.0.0"}', "duplicate key"),
        (encode(valid_document()).replace(b"4200", b"NaN"), "NaN is not allowed"),
        (b" " * (1 << 20) + b"{}", "larger than"),
        (b'{"run_id": "\\ud800"}', "not valid UTF-8"),
        (encode([valid_document()]), "expected a JSON object"),
        (encode(_without("landmarks_digest")), "missing landmarks_digest"),
        (encode(_with(("version",), "01.2.3")), "no leading zeros"),
        (encode(_with(("version",), "1.2.3-rc1")), "version"),
        (encode(_with(("parent_version",), "1.2.3")), "must be lower"),
        (encode(_with(("global_step",), True)), "global_step"),
        (encode(_with(("global_step",), 1.0)), "global_step"),
        (encode(_with(("landmarks_version",), 0)), "landmarks_version"),
        (encode(_with(("landmarks_digest",), HEX.upper())), "lowercase hex"),
        (encode(_with(("files", "../escape"), {"sha256": HEX, "length": 1})), "not an allowed release file name"),
        (encode(_with(("files", ".hidden"), {"sha256": HEX, "length": 1})), "not an allowed release file name"),
        (encode(_with(("files", "manifest.json"), {"sha256": HEX, "length": 1})), "not an allowed release file name"),
        (encode(_with(("files", "config.json", "extra"), 1)), "exactly sha256 and length"),
        (encode(_with(("files", "config.json", "length"), -1)), "length"),
        (encode(_with(("files",), {"model.safetensors": {"sha256": HEX, "length": 1}})), "must list config.json"),
        (encode(_with(("metrics",), [1, 2])), "metrics must be an object"),
        (encode(_with(("run_id",), "line\nbreak")), "printable"),
    ],
)
def test_malformed_manifests_are_refused(data: bytes, message: str):
    with pytest.raises(ReleaseError, match=message):
        parse_manifest(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _only_release_errors(parse, data: bytes) -> None:
    try:
        parse(data)
    except ReleaseError:
        pass


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_release_error(data: bytes):
    _only_release_errors(parse_manifest, data)
    _only_release_errors(parse_landmarks_ref, data)


@FUZZ
@given(json_values)
def test_arbitrary_json_raises_only_release_error(value: object):
    _only_release_errors(parse_manifest, encode(value))
    _only_release_errors(parse_landmarks_ref, encode(value))


@FUZZ
@given(st.sampled_from(sorted(valid_document())), st.sampled_from(["config.json", "landmarks.json"]), json_values, st.booleans())
def test_valid_manifest_with_one_field_replaced_raises_only_release_error(key: str, file_name: str, value: object, inside_files: bool):
    document = copy.deepcopy(valid_document())
    if inside_files:
        document["files"][file_name] = value
    else:
        document[key] = value
    _only_release_errors(parse_manifest, encode(document))


@FUZZ
@given(st.dictionaries(st.sampled_from(["version", "digest", "anchors", "format"]), json_values, max_size=4))
def test_landmark_files_raise_only_release_error(document: dict):
    _only_release_errors(parse_landmarks_ref, encode(document))


@FUZZ
@given(st.text(max_size=40))
def test_versions_parse_strictly_or_raise_release_error(text: str):
    try:
        version = ReleaseVersion.parse(text)
    except ReleaseError:
        return
    assert str(version) == text


def test_landmarks_ref_reads_version_and_digest():
    ref = parse_landmarks_ref(encode({"format": "cairn-landmarks/1", "version": 3, "anchors": ["x"], "digest": HEX}))
    assert (ref.version, ref.digest) == (3, HEX)
    with pytest.raises(ReleaseError, match="digest"):
        parse_landmarks_ref(encode({"version": 3, "anchors": ["x"]}))


def test_release_dir_refuses_symlinks_and_missing_files(tmp_path: Path):
    directory = tmp_path / "release"
    directory.mkdir()
    contents = {"model.safetensors": b"w" * 10, "config.json": b"{}", "tokenizer.json": b"{}"}
    landmarks = encode({"version": 1, "anchors": ["x"], "digest": HEX})
    contents["landmarks.json"] = landmarks
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    document = valid_document()
    document.update(
        landmarks_version=1, files={n: {"sha256": hashlib.sha256(d).hexdigest(), "length": len(d)} for n, d in contents.items()}
    )
    (directory / "manifest.json").write_bytes(encode(document))
    assert check_release_dir(directory).version == ReleaseVersion(1, 2, 3)

    (tmp_path / "real-config.json").write_bytes(b"{}")
    (directory / "config.json").unlink()
    (directory / "config.json").symlink_to(tmp_path / "real-config.json")
    with pytest.raises(ReleaseError, match="symlinks are refused"):
        check_release_dir(directory)
    (directory / "config.json").unlink()
    with pytest.raises(ReleaseError, match="config.json is missing"):
        check_release_dir(directory)
