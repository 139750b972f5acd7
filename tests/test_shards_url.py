"""Shard sets by URL: read over a real HTTP server on 127.0.0.1 that serves byte ranges (as object stores and
CDNs do), written to fsspec's ``memory://`` filesystem; every result is checked against the same shard set
read from the local folder."""

from __future__ import annotations

import hashlib
import json

import fsspec
import pytest
import torch
from range_server import RangeServer
from shard_builder import build_shards

from dataengine.formats.shard_format import encode_tensors, read_index, scan_members, shard_set_location
from dataengine.steps.shard_set import inspect_shards, read_shard_samples, verify_shards, write_index

# 32 x 32 latents: a sample is ~160 KiB of tensors next to ~2 KiB of tar headers and meta.json
BUCKETS = {(2, 32, 32): 5, (1, 32, 48): 3}


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    build_shards(root / "set", BUCKETS, samples_per_shard=2, vlm_dim=32)
    return root


def _tar_bytes(server: RangeServer) -> int:
    return server.bytes_sent(".tar")


def test_verify_and_inspect_read_a_shard_set_over_http(shard_set):
    local = shard_set / "set"
    total = sum(entry["bytes"] for entry in read_index(local)["shards"])
    with RangeServer(shard_set) as server:
        url = f"{server.url}/set"
        assert read_index(f"{url}/index.json") == read_index(local)

        before = _tar_bytes(server)
        summary = inspect_shards(url)
        inspected = _tar_bytes(server) - before
        expected = inspect_shards(local)
        assert {**summary, "path": ""} == {**expected, "path": ""}
        # headers and meta.json only, by ranged reads: a small fraction of the tars, no whole file
        assert 0 < inspected < 0.1 * total, (inspected, total)
        print(f"inspect over HTTP read {inspected} of {total} tar bytes")
        gets = [r for r in server.requests if r.method == "GET" and r.path.endswith(".tar")]
        assert gets and all(r.range for r in gets)

        report = verify_shards(url)  # downloads each tar once: sha256, count, keys, every sample decodes
        assert report.ok, report.problems
        local_report = verify_shards(local)
        assert (report.num_shards, report.num_samples, report.num_bytes) == (
            local_report.num_shards,
            local_report.num_samples,
            local_report.num_bytes,
        )
        with pytest.raises(FileNotFoundError, match="no index.json at .*/nothing/index.json"):
            read_index(f"{server.url}/nothing")


def test_tar_members_are_found_from_their_headers_alone(shard_set):
    """scan_members over HTTP gives the offsets tarfile finds locally, one small request per member."""
    import tarfile

    local = shard_set / "set"
    entry = read_index(local)["shards"][0]
    with tarfile.open(local / entry["path"]) as tar:
        expected = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
    with RangeServer(shard_set) as server:
        fs, root = shard_set_location(f"{server.url}/set")
        samples = scan_members(fs, f"{root}/{entry['path']}", entry["bytes"])
        requests = [r for r in server.requests if r.method == "GET"]
    found = [
        (f"{key}.{name}", offset, size)
        for key, members in samples
        for name, (offset, size) in members.items()
    ]
    assert sorted(found) == sorted(expected)
    assert len(requests) <= len(expected) + 1  # one per member header, plus the end-of-archive check


def test_the_shard_writer_uploads_each_tar_and_resume_looks_at_the_url(tmp_path):
    """``dataengine shards`` with ``output`` a URL: the writer (ShardAssembler) stages each tar locally,
    uploads it and deletes the local copy; a recorded shard counts as done only if it is at the URL."""
    import pandas as pd

    from pipelines.runtime import PartStore
    from pipelines.shards import RemoteShardSet, ShardAssembler, _completed_records

    source = build_shards(tmp_path / "source", {(1, 4, 4): 3}, samples_per_shard=3, vlm_dim=32)
    samples = read_shard_samples(source / read_index(source)["shards"][0]["path"])
    rows = [
        {"pair_id": key, "shard": "t1_h4_w4/shard-000000.tar", "tensors": encode_tensors(tensors, key),
         "meta": json.dumps(meta), "stage": None, "reason": None, "detail": None}
        for key, tensors, meta in samples
    ]  # fmt: skip
    rows.append(
        {**rows[0], "pair_id": "zz-rejected", "stage": "vae", "reason": "encode_failed", "detail": "x"}
    )
    plan = pd.DataFrame({"shard": [r["shard"] for r in rows]})
    url = "memory://bucket/shards/run"
    remote = RemoteShardSet(url)
    staging = tmp_path / "staging"
    store = PartStore(staging / ".parts", id_column="shard")
    for record in ShardAssembler(staging, plan, threads=1, remote=remote).records(iter(rows)):
        store.append_rows([record])
    fs = fsspec.filesystem("memory")
    uploaded = fs.cat_file("/bucket/shards/run/t1_h4_w4/shard-000000.tar")
    assert not (staging / "t1_h4_w4" / "shard-000000.tar").exists()  # staging copy gone after the upload
    done = _completed_records(staging, store, remote)
    assert list(done) == ["t1_h4_w4/shard-000000.tar"]
    assert done["t1_h4_w4/shard-000000.tar"]["rejections"][0]["pair_id"] == "zz-rejected"
    entry = done["t1_h4_w4/shard-000000.tar"]["entry"]
    assert (entry["bytes"], entry["sha256"]) == (len(uploaded), hashlib.sha256(uploaded).hexdigest())
    (tmp_path / "back.tar").write_bytes(uploaded)
    for (key, tensors, meta), (key2, tensors2, meta2) in zip(
        read_shard_samples(tmp_path / "back.tar"), samples, strict=True
    ):
        assert (key, meta) == (key2, meta2)
        assert all(torch.equal(tensors[k], tensors2[k]) for k in tensors2)
    # index.json last, then the set reads back from the URL (memory:// lists files: stray check included)
    write_index(staging, [entry], {"t1_h4_w4": [1, 4, 4]}, 32, {"vae": "v", "vlm": "l"}, {})
    remote.upload(staging / "index.json", "index.json")
    assert read_index(url)["num_samples"] == 3
    report = verify_shards(url)
    assert report.ok and report.num_samples == 3, report.problems
    fs.pipe_file("/bucket/shards/run/t1_h4_w4/.shard-000001.tar.tmp", b"half")
    assert [p["problem"] for p in verify_shards(url).problems] == ["stray"]
    fs.rm_file("/bucket/shards/run/t1_h4_w4/shard-000000.tar")  # lost at the destination: redone on resume
    assert _completed_records(staging, store, remote) == {}


def _batches(loader, count: int) -> list[dict]:
    try:
        return [next(loader) for _ in range(count)]
    finally:
        loader.close()  # its DataLoader workers stop now, not at a garbage collection in a later test


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["keys"] == y["keys"]
        for name, value in x.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, y[name]), name


def test_the_loader_streams_a_shard_set_over_http_with_ranged_reads_and_exact_resume(shard_set):
    """The trainer's loader on the URL: the batches of the local folder, in loader workers too (each opens
    its own HTTP client), every tar byte fetched by a ranged request no larger than a member, and the
    cursor resumes to the very next batch."""
    from trainer.data import DataConfig, ShardLoader

    local = str(shard_set / "set")
    steps = ShardLoader(DataConfig(shards=local, batch_size=2), seed=3).steps_per_epoch
    expected = _batches(ShardLoader(DataConfig(shards=local, batch_size=2), seed=3), steps + 2)
    with RangeServer(shard_set) as server:
        url = f"{server.url}/set"
        _same(_batches(ShardLoader(DataConfig(shards=url, batch_size=2), seed=3), steps + 2), expected)
        tar_gets = [r for r in server.requests if r.method == "GET" and r.path.endswith(".tar")]
        biggest_member = max(
            size
            for entry in read_index(local)["shards"]
            for _key, members in _members(local, entry)
            for _offset, size in members.values()
        )
        assert tar_gets and all(r.range for r in tar_gets)
        assert max(r.sent for r in tar_gets) <= max(biggest_member, 2048)  # never a whole tar
        workers = ShardLoader(DataConfig(shards=url, batch_size=2, num_workers=2), seed=3)
        _same(_batches(workers, steps + 2), expected)
        first = ShardLoader(DataConfig(shards=url, batch_size=2), seed=3)
        _batches(first, 3)
        resumed = ShardLoader(DataConfig(shards=url, batch_size=2), seed=3)
        resumed.load_state_dict(first.state_dict())
        _same(_batches(resumed, steps - 1), expected[3 : steps + 2])


def _members(local: str, entry: dict) -> list:
    fs, root = shard_set_location(local)
    return scan_members(fs, f"{root}/{entry['path']}", entry["bytes"])


class PlainServer:
    """The standard library's ``http.server`` as ``python -m http.server`` runs it: it ignores ``Range`` and
    answers every GET with 200 and the whole file."""

    def __init__(self, folder):
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(folder))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> PlainServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def test_a_server_that_ignores_range_requests_stops_the_loader_at_start_naming_it(shard_set):
    """Against ``http.server`` the index reads (a whole-file GET is right for it), then the loader's first
    ranged request gets a 200: the loader stops before reading a sample, naming the server and what it did."""
    from dataengine.formats.recipe import UserError
    from dataengine.formats.shard_format import check_range_requests, ranged_read
    from trainer.data import DataConfig, ShardLoader

    local = shard_set / "set"
    with PlainServer(shard_set) as server:
        url = f"{server.url}/set"
        assert read_index(url) == read_index(local)
        with pytest.raises(UserError, match=rf"{server.url} \(SimpleHTTP.*\) ignores range requests: .* 200"):
            ShardLoader(DataConfig(shards=url, batch_size=2), seed=3)
        # the read check by itself, as any filesystem's ranged read: the whole file is not the range asked
        fs, root = shard_set_location(url)
        path = f"{root}/{read_index(local)['shards'][0]['path']}"
        with pytest.raises(UserError, match=rf"{server.url} answered a request for bytes 10-19 .* not 10"):
            ranged_read(fs, path, 10, 20)
    with RangeServer(shard_set) as server:  # a server that serves ranges passes both checks
        fs, root = shard_set_location(f"{server.url}/set")
        path = f"{root}/{read_index(local)['shards'][0]['path']}"
        check_range_requests(fs, path)
        assert (
            ranged_read(fs, path, 10, 20)
            == (local / read_index(local)["shards"][0]["path"]).read_bytes()[10:20]
        )


@pytest.mark.process
@pytest.mark.fit
def test_trainer_fit_from_a_plain_http_server_exits_2_naming_the_server(shard_set, tmp_path):
    """``trainer fit`` with ``train.data.shards`` on ``http.server``: exit 2 and one error line naming the
    server (before the model is built), not a deserialisation error deep in the loader."""
    import subprocess

    from tests.helpers import REPO, cli_env, trainer

    with PlainServer(shard_set) as server:
        command = trainer(
            "fit",
            str(REPO / "manifests" / "train_debug.toml"),
            f'train.data.shards="{server.url}/set"',
            f'train.runs_dir="{tmp_path}"',
            "train.steps=2",
        )
        result = subprocess.run(
            command,
            cwd=tmp_path,
            env=cli_env(OMP_NUM_THREADS="1"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and f"{server.url} (SimpleHTTP" in errors[0], result.stderr[-3000:]
    assert "ignores range requests" in errors[0] and "Traceback" not in result.stderr
