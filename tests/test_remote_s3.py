"""S3 remotes against a real S3 API server on loopback (tests/s3server.py): conditional writes, where the
endpoint and the credentials come from, and that credentials never reach a repository's files. The behaviours
shared with folder remotes (clone, push, races, partial fetch, ledger) run on both in tests/test_remote.py."""

from __future__ import annotations

import os

import pytest

from conftest import tree_hashes
from mlvc.errors import RemoteError
from mlvc.remote import S3Backend, read_tracking
from mlvc.repo import Repo
from test_remote import make_history

pytest.importorskip("moto.server", reason="the test extra installs moto[server]")


@pytest.fixture(scope="module")
def endpoint():
    from s3server import s3_server

    with s3_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint, request):
    from s3server import make_bucket

    name = "mlvc-" + request.node.name.replace("_", "-").lower()[:40].strip("-")
    make_bucket(endpoint, name)
    return name


def test_conditional_writes_are_a_compare_and_swap(endpoint, bucket):
    b = S3Backend(bucket, "p", endpoint)
    assert b.put_if("refs.json", b"one", None)
    assert not b.put_if("refs.json", b"two", None)  # If-None-Match: * on an existing object
    data, token = b.get_versioned("refs.json")
    assert data == b"one" and token
    assert b.put_if("refs.json", b"two", token)
    assert not b.put_if("refs.json", b"three", token)  # If-Match on a stale ETag
    assert b.get("refs.json") == b"two"
    assert b.get("absent") is None
    assert b.get_range("refs.json", 1, 3) == b"wo"
    assert [k for k, _s, _t in b.list("")] == ["refs.json"]


def test_credentials_never_reach_the_repository(tmp_path, endpoint, bucket):
    from s3server import ACCESS_KEY, SECRET_KEY

    a = make_history(tmp_path / "a")
    a.remote_add("origin", f"s3://{bucket}/models", endpoint=endpoint)
    a.push()
    b = Repo.init(str(tmp_path / "b"))
    b.clone(f"s3://{bucket}/models", endpoint=endpoint)
    for root in (a.dir, b.dir):
        for folder, _dirs, files in os.walk(root):
            for name in files:
                with open(os.path.join(folder, name), "rb") as f:
                    data = f.read()
                assert SECRET_KEY.encode() not in data and ACCESS_KEY.encode() not in data, name
    with open(os.path.join(b.dir, "remotes.toml")) as f:
        text = f.read()
    assert endpoint in text and "secret" not in text.lower()


def test_the_endpoint_can_come_from_the_environment(tmp_path, endpoint, bucket, monkeypatch):
    a = make_history(tmp_path / "a")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    a.remote_add("origin", f"s3://{bucket}")  # no endpoint stored: botocore reads AWS_ENDPOINT_URL_S3
    a.push()
    b = Repo.init(str(tmp_path / "b"))
    b.clone(f"s3://{bucket}")
    assert tree_hashes(tmp_path / "b") == tree_hashes(tmp_path / "a")
    with open(os.path.join(b.dir, "remotes.toml")) as f:
        assert "endpoint =" not in f.read()


def test_a_missing_bucket_is_a_clear_error_and_leaves_nothing(tmp_path, endpoint):
    a = make_history(tmp_path / "a")
    a.remote_add("origin", "s3://no-such-bucket-here/x", endpoint=endpoint)
    with pytest.raises(RemoteError, match="no-such-bucket-here.*check the endpoint, the bucket"):
        a.push()
    assert read_tracking(a.dir, "origin") == {}
