import io
import json
import zipfile

import pyarrow as pa
import pytest

from store import SCHEMA_VERSION, DamagedFile, RunWriter, Store, StoreError
from store.schema import RUNS_SCHEMA, record


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_server")()


def identity(run_id, eta=0.25, configuration="vgg11-digits-abc"):
    return dict(run_id=run_id, sweep_id="sw", configuration=configuration, arch="vgg11", dataset="digits", eta=eta,
                seed=1, role="noisy" if eta else "clean", head_layer="classifier", config="{}")


def snapshot_rows(run_id, steps, layers=("features.0", "classifier")):
    return [dict(run_id=run_id, step=s, epoch=s / 10, layer=name, layer_index=i, numel=10, quantity=q,
                 value=float(s + i) * (1 if q == "trace" else 10), stderr=0.1, probe_values=[float(s), float(i)])
            for s in steps for q in ("trace", "row_energy") for i, name in enumerate(layers)]


def zipped(committed):
    """A stand-in checkpoint: a zip archive, as torch.save writes, holding the committed list."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("committed.json", json.dumps(committed))
    return buffer.getvalue()


def unzipped(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return json.loads(archive.read("committed.json"))


def write_run(store, run_id, steps_per_commit, *, eta=0.25, crash_before_commit=None, done=True):
    """A run through the writer: one commit per list of steps; optionally a chunk written
    but never committed (the worker died), then the run done."""
    writer = RunWriter(store, identity(run_id, eta))
    assert writer.begin(host="h") is None
    writer.start(total_steps=100, device="cpu")
    for steps in steps_per_commit:
        writer.log("snapshots", snapshot_rows(run_id, steps))
        writer.log("metrics", [dict(run_id=run_id, step=s, epoch=s / 10, scope="epoch", name="x", value=1.0)
                               for s in steps])
        writer.commit(steps[-1], checkpoint=zipped)
    if done:
        writer.done({"test_acc": 0.5})
    return writer


def test_only_committed_chunks_are_visible_and_never_twice(store_uri):
    store = Store.open(store_uri, create=True)
    writer = write_run(store, "r1", [[10]], done=False)
    # attempt 1 writes the rows of step 20 as a chunk and dies before its commit ...
    name = "snapshots/a001-c000001.parquet"
    store.write_data("r1", name, b"orphan: no record lists it")
    assert sorted(set(store.snapshots()["step"].to_pylist())) == [10]
    # ... attempt 2 resumes from the checkpoint (step 10) and writes step 20 again under its own number
    again = RunWriter(store, identity("r1"))
    committed = unzipped(again.begin(host="h"))
    again.start(total_steps=100, device="cpu", step=10, committed=committed)
    assert again.record["attempt"] == 2 and writer.record["attempt"] == 1
    again.log("snapshots", snapshot_rows("r1", [20]))
    again.commit(20, checkpoint=zipped)
    again.done({})
    table = Store.open(store_uri).snapshots(quantity="trace")
    keys = sorted(zip(table["step"].to_pylist(), table["layer"].to_pylist()))
    assert keys == sorted({(s, layer) for s in (10, 20) for layer in ("features.0", "classifier")})
    head = Store.open(store_uri).snapshots(layer="classifier", quantity="trace")
    assert head["value"].to_pylist() == [11.0, 21.0] and set(head["arch"].to_pylist()) == {"vgg11"}
    assert store.snapshots(quantity="row_energy")["value"].to_pylist()[:2] == [100.0, 110.0]


def test_reader_joins_identity_filters_runs_and_round_trips_records(store_uri):
    store = Store.open(store_uri, create=True)
    for rid, eta in (("a", 0.0), ("b", 0.25), ("c", 0.25)):
        write_run(store, rid, [[5]], eta=eta)
    assert store.run_ids() == ["a", "b", "c"]
    assert store.runs(eta=0.25)["run_id"].to_pylist() == ["b", "c"]
    snaps = store.snapshots(eta=0.25)
    assert sorted(set(snaps["run_id"].to_pylist())) == ["b", "c"] and set(snaps["eta"].to_pylist()) == {0.25}
    assert snaps.schema.names[:7] == ["run_id", "sweep_id", "configuration", "arch", "dataset", "eta", "seed"]
    assert store.snapshots(run_ids=["a"]).num_rows == 4
    back = store.read_record("b")
    assert back["final_metrics"] == {"test_acc": 0.5} and back["eta"] == 0.25 and len(back["committed"]) == 2
    assert all(len(e["sha256"]) == 64 and e["bytes"] > 0 for e in back["committed"])
    assert store.runs().schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert store.metrics().num_rows == 3 and store.metrics().schema.names[-2:] == ["name", "value"]


def test_a_failure_inside_the_writer_is_recorded_with_its_reason(tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True)
    with pytest.raises(RuntimeError, match="no such device"):
        with RunWriter(store, identity("r")) as writer:
            writer.begin(host="h")
            raise RuntimeError("no such device")  # a set-up failure, before start()
    got = store.read_record("r")
    assert (got["status"], got["attempt"], got["error"]) == ("failed", 1, "RuntimeError: no such device")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "same-size garbage"])
@pytest.mark.parametrize("target", ["record", "snapshot chunk", "metrics chunk", "checkpoint"])
def test_damage_is_found_named_and_repaired(tmp_path, damage, target):
    store = Store.open(str(tmp_path / "s"), create=True)
    write_run(store, "ok", [[5], [10]])
    write_run(store, "hit", [[5], [10]], done=target != "checkpoint")
    folder = tmp_path / "s" / "runs" / "hit"
    path = {"record": folder / "record.parquet", "checkpoint": folder / "checkpoint.pt",
            "snapshot chunk": folder / "snapshots" / "a001-c000001.parquet",
            "metrics chunk": folder / "metrics" / "a001-c000000.parquet"}[target]
    size = path.stat().st_size
    path.write_bytes({"truncate": path.read_bytes()[: size // 2], "garbage": b"\x00garbage" * 3,
                      "same-size garbage": b"x" * size}[damage])

    quick = {h.run_id: h for h in store.inspect()}
    deep = {h.run_id: h for h in store.inspect(verify="hash", checkpoints="crc")}
    assert not quick["ok"].problems and not deep["ok"].problems
    (problem,) = deep["hit"].problems
    assert str(path) in str(problem) and deep["hit"].damaged
    if not (damage == "same-size garbage" and target != "record") and target != "checkpoint":
        assert quick["hit"].damaged  # sizes alone catch it
    # readers leave the damaged run out instead of failing
    assert store.runs()["run_id"].to_pylist() == (["hit", "ok"] if quick["hit"].usable else ["ok"])
    lines = store.repair(deep["hit"])
    assert lines and not store.inspect(["hit"], verify="hash", checkpoints="crc")[0].problems
    aside = list((tmp_path / "s" / "damaged").rglob(path.name))
    (why,) = (tmp_path / "s" / "damaged").glob("*/WHY.txt")
    assert aside and str(path) in why.read_text()  # kept, with the reason, never deleted
    if target in ("snapshot chunk", "metrics chunk"):  # restarts from step 0, its attempt count kept
        fresh = store.read_record("hit")
        assert (fresh["status"], fresh["committed"], fresh["attempt"]) == ("pending", [], 1)


def test_a_new_attempt_never_reuses_a_chunk_name_even_without_a_record(tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True)
    write_run(store, "r", [[5], [10]], done=False)
    (tmp_path / "s" / "runs" / "r" / "record.parquet").write_bytes(b"garbage")
    writer = RunWriter(store, identity("r"))
    committed = unzipped(writer.begin(host="h"))  # the damaged record is set aside
    assert writer.record["attempt"] == 2 and list((tmp_path / "s" / "damaged").rglob("record.parquet"))
    writer.start(total_steps=100, device="cpu", step=10, committed=committed)
    assert [e["name"] for e in store.read_record("r")["committed"]][-1] == "metrics/a001-c000001.parquet"


def test_checkpoint_bytes_round_trip_and_no_temporaries_are_left(store_uri):
    store = Store.open(store_uri, create=True)
    assert store.read_checkpoint("r") is None
    store.write_checkpoint("r", b"abc")
    store.write_checkpoint("r", b"defg")
    assert store.read_checkpoint("r") == b"defg"
    if "://" not in store_uri:
        from pathlib import Path

        assert not [p for p in Path(store_uri).rglob("*") if p.name.startswith(".")]


def test_open_errors_say_what_to_do(tmp_path):
    with pytest.raises(StoreError, match="there is no store at .*check the path"):
        Store.open(str(tmp_path / "missing"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write .*_store.json"):
        Store.open(str(blocker / "store"), create=True)
    Store.open(str(tmp_path / "s"), create=True)
    (tmp_path / "s" / "_store.json").write_text('{"schema_version": 99}')
    with pytest.raises(StoreError, match="schema version 99; .* reads version 2"):
        Store.open(str(tmp_path / "s"))
    (tmp_path / "s" / "_store.json").write_text('{"schema_version": 1}')
    with pytest.raises(StoreError, match="sweep store migrate store="):
        Store.open(str(tmp_path / "s"))
    (tmp_path / "s" / "_store.json").write_text("garbage")
    with pytest.raises(DamagedFile, match=r"_store.json is damaged: .*schema_version"):
        Store.open(str(tmp_path / "s"))


def test_bad_rows_and_ids_are_refused_before_anything_is_written(tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True)
    writer = RunWriter(store, identity("r"))
    writer.begin(host="h")
    writer.start(total_steps=10, device="cpu")
    writer.log("snapshots", [dict(run_id="r", step="not a number")])
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, KeyError)):
        writer.commit(1, checkpoint=lambda c: b"")
    assert store.read_record("r")["committed"] == []
    with pytest.raises(StoreError, match="invalid run id"):
        store.write_record(record(identity("../escape")))


def test_a_schema_1_store_is_migrated_in_place(tmp_path):
    import pyarrow.parquet as pq

    root = tmp_path / "old"
    (root / "runs" / "r" / "snapshots").mkdir(parents=True)
    (root / "_store.json").write_text('{"schema_version": 1}')
    v1_snap = pa.table({"run_id": ["r"], "arch": ["vgg11"], "dataset": ["digits"], "eta": [0.0], "seed": [0],
                        "step": [5], "epoch": [0.5], "layer": ["classifier"], "layer_index": pa.array([0], pa.int32()),
                        "numel": [10], "trace": [1.5], "stderr": [0.1], "probe_values": [[1.0, 2.0]]})
    pq.write_table(v1_snap, root / "runs" / "r" / "snapshots" / "a001-c000000.parquet")
    config = {"arch": {"name": "vgg11"}, "dataset": {"name": "digits"}, "eta": 0.0, "seed": 0, "noise_seed": None,
              "train": {}, "monitor": {}, "runtime": {}}
    v1_record = {**record(identity("r", 0.0)), "status": "done", "config": json.dumps(config),
                 "committed": ["snapshots/a001-c000000.parquet"]}
    del v1_record["configuration"]
    schema = pa.schema([f if f.name != "committed" else pa.field("committed", pa.list_(pa.string()))
                        for f in RUNS_SCHEMA if f.name != "configuration"])
    pq.write_table(pa.Table.from_pylist([v1_record], schema=schema), root / "runs" / "r" / "record.parquet")
    from store.migrate import migrate

    assert migrate(str(root))[-1].endswith("now has schema version 2")
    snaps = Store.open(str(root)).snapshots()
    (row,) = snaps.to_pylist()
    assert (row["quantity"], row["value"], row["arch"], row["step"]) == ("trace", 1.5, "vgg11", 5)
    assert migrate(str(root)) == [f"{root} already has schema version 2; nothing to do"]


def test_a_checkpoint_whose_data_are_damaged_is_set_aside_so_the_next_attempt_starts_over(tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True)
    write_run(store, "r", [[5], [10]], done=False)
    (tmp_path / "s" / "runs" / "r" / "record.parquet").write_bytes(b"garbage")  # its list is lost ...
    (tmp_path / "s" / "runs" / "r" / "snapshots" / "a001-c000000.parquet").write_bytes(b"x")  # ... and a chunk
    writer = RunWriter(store, identity("r"))
    with pytest.raises(DamagedFile, match="a001-c000000.parquet is damaged: its content differs.*restarts this run"):
        with writer:
            committed = unzipped(writer.begin(host="h"))
            writer.start(total_steps=100, device="cpu", step=10, committed=committed)
    assert store.read_record("r")["status"] == "failed" and store.read_checkpoint("r") is None
    again = RunWriter(store, identity("r"))
    assert again.begin(host="h") is None and again.record["attempt"] == 3  # from step 0, fresh chunk names


def test_a_pairs_chunk_written_before_distances_were_logged_reads_them_as_null(tmp_path):
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from store.files import read_parquet
    from store.schema import PAIRS_SCHEMA

    before = pa.schema([field for field in PAIRS_SCHEMA if field.name != "distance"])
    row = dict(run_id="r", step=5, epoch=0.5, operator="ggn", design="columns", layer="a", other="b", layer_index=0,
               other_index=1, value=0.25, stderr=0.1, probe_values=[0.25])
    path = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=before), path)
    checked = read_parquet(path.read_bytes(), PAIRS_SCHEMA, shown="old.parquet")  # what `sweep check` does
    read = pads.dataset([str(path)], schema=PAIRS_SCHEMA, format="parquet").to_table()  # what Store.pairs does
    for table in (checked, read):
        assert table.schema.names == PAIRS_SCHEMA.names
        assert table.to_pylist() == [{**row, "distance": None}]
