import pyarrow as pa
import pytest

from workers.store import SCHEMA_VERSION, Store, StoreError, now


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_server")()


def record(run_id, **changes):
    base = dict(run_id=run_id, sweep_id="sw", arch="vgg11", dataset="digits", eta=0.25, seed=1, role="noisy",
                head_layer="classifier", config="{}", status="running", attempt=1, host="h", device="cpu",
                started_at=now(), ended_at=None, heartbeat_at=now(), error=None, step=0, total_steps=20,
                committed=[], final_metrics={})
    return {**base, **changes}


def snapshot_rows(run_id, steps, layers=("features.0", "classifier"), eta=0.25):
    return [dict(run_id=run_id, arch="vgg11", dataset="digits", eta=eta, seed=1, step=s, epoch=s / 10, layer=name,
                 layer_index=i, numel=10, trace=float(s + i), stderr=0.1, probe_values=[float(s), float(i)])
            for s in steps for i, name in enumerate(layers)]


def test_only_committed_chunks_are_visible_and_never_twice(store_uri):
    store = Store.open(store_uri, create=True)
    store.write_record(record("r1"))
    first = store.write_chunk("r1", "snapshots", snapshot_rows("r1", [10]), attempt=1, chunk=0)
    assert store.snapshots().num_rows == 0  # written, not committed
    store.write_record(record("r1", committed=[first], step=10))
    # attempt 1 writes the chunk for step 20 and dies before committing it ...
    store.write_chunk("r1", "snapshots", snapshot_rows("r1", [20]), attempt=1, chunk=1)
    # ... attempt 2 resumes from step 10 and writes step 20 again, then commits
    second = store.write_chunk("r1", "snapshots", snapshot_rows("r1", [20]), attempt=2, chunk=0)
    store.write_record(record("r1", attempt=2, committed=[first, second], step=20, status="done"))
    table = Store.open(store_uri).snapshots()
    keys = sorted(zip(table["step"].to_pylist(), table["layer"].to_pylist()))
    assert keys == sorted({(s, layer) for s in (10, 20) for layer in ("features.0", "classifier")})
    assert Store.open(store_uri).snapshots(layer="classifier")["trace"].to_pylist() == [11.0, 21.0]


def test_reader_filters_runs_and_round_trips_records(store_uri):
    store = Store.open(store_uri, create=True)
    for rid, eta in (("a", 0.0), ("b", 0.25), ("c", 0.25)):
        name = store.write_chunk(rid, "snapshots", snapshot_rows(rid, [5], eta=eta), attempt=1, chunk=0)
        store.write_record(record(rid, eta=eta, committed=[name], final_metrics={"test_acc": 0.5}))
    assert store.run_ids() == ["a", "b", "c"]
    assert store.runs(eta=0.25)["run_id"].to_pylist() == ["b", "c"]
    assert sorted(set(store.snapshots(eta=0.25)["run_id"].to_pylist())) == ["b", "c"]
    assert store.snapshots(run_ids=["a"]).num_rows == 2
    back = store.read_record("b")
    assert back["final_metrics"] == {"test_acc": 0.5} and back["eta"] == 0.25 and back["committed"]
    assert store.runs().schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert store.metrics().num_rows == 0 and store.metrics().schema.names[-2:] == ["name", "value"]


def test_a_rewritten_record_replaces_the_old_one(store_uri):
    store = Store.open(store_uri, create=True)
    store.write_record(record("r"))
    store.write_record(record("r", status="failed", error="boom", attempt=3))
    assert store.runs()["status"].to_pylist() == ["failed"] and store.read_record("r")["attempt"] == 3


def test_checkpoint_bytes_round_trip(store_uri):
    store = Store.open(store_uri, create=True)
    assert store.read_checkpoint("r") is None
    store.write_checkpoint("r", b"abc")
    store.write_checkpoint("r", b"defg")
    assert store.read_checkpoint("r") == b"defg"


def test_no_temporary_files_are_left_behind(tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True)
    store.write_record(record("r"))
    store.write_chunk("r", "metrics", [dict(run_id="r", step=1, epoch=0.1, scope="epoch", name="x", value=1.0)],
                      attempt=1, chunk=0)
    names = [p.name for p in (tmp_path / "s").rglob("*")]
    assert not [n for n in names if n.startswith(".")]


def test_open_errors_say_what_to_do(tmp_path):
    with pytest.raises(StoreError, match="there is no store at .*check the path"):
        Store.open(str(tmp_path / "missing"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write to the store .*writable store=PATH"):
        Store.open(str(blocker / "store"), create=True)
    Store.open(str(tmp_path / "s"), create=True)
    (tmp_path / "s" / "_store.json").write_text('{"schema_version": 99}')
    with pytest.raises(StoreError, match="schema version 99; .* reads version 1"):
        Store.open(str(tmp_path / "s"))


def test_bad_rows_are_refused_before_anything_is_written(tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, KeyError)):
        store.write_chunk("r", "snapshots", [dict(run_id="r", step="not a number")], attempt=1, chunk=0)
    with pytest.raises(StoreError, match="invalid run id"):
        store.write_record(record("../escape"))
    assert store.run_ids() == []
