import pyarrow.compute as pc
import pytest
import torch

from store import Store
from tests.workers import cifar_archives
from workers import checkpoint, datasets
from workers.run_config import RunConfigError, content_json, run_id
from workers.train import RunFailed, train


def final_weights(store, config):
    state = checkpoint.from_bytes(store.read_checkpoint(run_id(config)), content_json=content_json(config), where="")
    return state["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def rows(table):
    keys = ["quantity", "layer"] if "layer" in table.schema.names else ["name"]
    return table.sort_by([("step", "ascending"), *((k, "ascending") for k in keys)]).to_pylist()


class Crash(Exception):
    pass


def crash_at(step):
    def on_step(s):
        if s == step:
            raise Crash(f"injected at step {s}")

    return on_step


def test_monitoring_on_off_or_k_never_changes_the_trajectory(tmp_path, tiny_config):
    store = Store.open(str(tmp_path / "s"), create=True)
    configs = [tiny_config("eta=0.25"), tiny_config("eta=0.25", "monitor.num_probes=3"),
               tiny_config("eta=0.25", "monitor.enabled=false"),
               tiny_config("eta=0.25", "monitor.block_frobenius=true"),
               tiny_config("eta=0.25", "monitor.estimator=ggn", "monitor.head=exact"),
               tiny_config("eta=0.25", "monitor.head=exact", "monitor.eigen.every=11", "monitor.density.epochs=[1,3]",
                           "monitor.density.steps=12", "monitor.density.deflate=2"),
               tiny_config("eta=0.25", "monitor.gauss_newton.every=11", "monitor.interlayer.every=22",
                           "monitor.interlayer.operators=[ggn,tensor]", "monitor.interlayer.num_probes=2")]
    for config in configs:
        assert train(config, store)["status"] == "done"
    weights = [final_weights(store, c) for c in configs]
    for other in weights[1:]:
        assert_same_weights(weights[0], other)
    # the extra products of block_frobenius=true are kept, as rows of their own quantity
    frobenius = store.snapshots(run_ids=[run_id(configs[3])])
    assert set(frobenius["quantity"].to_pylist()) == {"trace", "row_energy", "block_frobenius_sq", "anisotropy"}
    by_quantity = {(r["step"], r["layer"], r["quantity"]): r["value"] for r in rows(frobenius)}
    for (step, layer, quantity), value in by_quantity.items():  # kappa_l = ||H_ll||_F / |T_l| (eq. 7)
        if quantity == "anisotropy":
            frob, trace = by_quantity[(step, layer, "block_frobenius_sq")], by_quantity[(step, layer, "trace")]
            assert value == pytest.approx(max(frob, 0) ** 0.5 / abs(trace))
    assert rows(frobenius.filter(pc.equal(frobenius["quantity"], "trace"))) != []
    snaps = store.snapshots(run_ids=[run_id(configs[0])], quantity="trace")
    assert set(store.snapshots(run_ids=[run_id(configs[0])])["quantity"].to_pylist()) == {"trace", "row_energy"}
    layers = len(set(snaps["layer"].to_pylist()))
    assert snaps.num_rows == (33 // 5) * layers  # steps 5, 10, ..., 30
    assert sorted(set(snaps["step"].to_pylist())) == [5, 10, 15, 20, 25, 30]
    assert store.snapshots(run_ids=[run_id(configs[2])]).num_rows == 0
    k3 = store.snapshots(run_ids=[run_id(configs[1])], quantity="trace")
    assert {len(v) for v in k3["probe_values"].to_pylist()} == {3}
    # the first 3 probes of K=10 are the K=3 probes: same generator, same order
    ten = rows(snaps)
    three = rows(k3)
    assert [r["probe_values"][:3] for r in ten] == [r["probe_values"] for r in three]
    # the Gauss-Newton estimator with the exact head: stored as the trace (F1 holds for the built-ins),
    # the head's rows exact (no probe values) and within the Hessian estimator's noise of it
    ggn = store.snapshots(run_ids=[run_id(configs[4])])
    assert set(ggn["quantity"].to_pylist()) == {"trace", "block_frobenius_sq", "anisotropy"}  # kappa: the head's
    assert {r["layer"] for r in rows(ggn) if r["quantity"] == "anisotropy"} == {"linear"}
    head = [r for r in rows(ggn) if r["layer"] == "linear" and r["quantity"] != "anisotropy"]
    assert {(r["quantity"], r["stderr"], len(r["probe_values"])) for r in head} == {
        ("trace", 0.0, 0), ("block_frobenius_sq", 0.0, 0)}
    body = [r for r in rows(ggn) if r["layer"] != "linear"]
    assert {r["quantity"] for r in body} == {"trace"} and {len(r["probe_values"]) for r in body} == {10}
    estimated = {(r["step"], r["layer"]): r for r in ten}
    for r in (r for r in rows(ggn) if r["quantity"] == "trace"):
        e = estimated[(r["step"], r["layer"])]
        assert abs(r["value"] - e["value"]) < 6 * (r["stderr"] ** 2 + e["stderr"] ** 2) ** 0.5 + 1e-9
    # eigenvalues once per epoch (every 11 steps) of the whole Hessian and the head, densities after epochs 1 and 3
    spectral = store.snapshots(run_ids=[run_id(configs[5])])
    eigen = [r for r in rows(spectral) if r["quantity"].startswith("lambda")]
    assert {(r["step"], r["layer"], r["quantity"]) for r in eigen} == {
        (step, layer, q) for step in (11, 22, 33) for layer in ("(network)", "linear")
        for q in ("lambda_max", "lambda_min")}
    assert {r["layer_index"] for r in eigen if r["layer"] == "(network)"} == {-1}
    by = {(r["step"], r["layer"], r["quantity"]): r for r in rows(spectral)}
    for step in (11, 22, 33):  # the head block is PSD (F1): 0 <= lambda_min <= lambda_max <= trace, residuals small
        head_max, head_min = by[(step, "linear", "lambda_max")], by[(step, "linear", "lambda_min")]
        scale = head_max["value"]
        assert -1e-3 * scale <= head_min["value"] <= scale <= by[(step, "(network)", "lambda_max")]["value"] * 1.001
        assert head_max["stderr"] <= 1e-3 * scale * 1.0001 and head_max["probe_values"] == []
    exact_trace = {r["step"]: r["value"] for r in rows(spectral) if r["layer"] == "linear" and r["quantity"] == "trace"}
    assert by[(33, "linear", "lambda_max")]["value"] <= exact_trace.get(33, float("inf")) * 1.001
    spectra = store.spectra(run_ids=[run_id(configs[5])]).to_pylist()
    assert {(r["step"], r["layer"]) for r in spectra} == {(s, layer) for s in (11, 33)
                                                          for layer in ("(network)", "linear")}
    for r in spectra:
        assert len(r["nodes"]) == len(r["weights"]) == 12 and len(r["outliers"]) <= 2
        assert abs(sum(r["weights"]) + 2 / r["numel"] - 1) < 1e-9 and r["lower"] < r["upper"]
        assert r["lower"] <= min(r["outliers"]) and max(r["outliers"]) <= r["upper"]
    # the Gauss-Newton split once per epoch, the pair table every two epochs for two operators
    inside = store.snapshots(run_ids=[run_id(configs[6])])
    split = {(r["step"], r["layer"], r["quantity"]): r for r in rows(inside) if r["quantity"].startswith("split_")}
    assert {(s, q) for s, _, q in split} == {(s, f"split_{q}") for s in (11, 22, 33)
                                             for q in ("trace", "ggn_trace", "tensor_trace")}
    for (step, layer, quantity), r in split.items():  # the same probes: h - g = t, probe by probe
        if quantity == "split_tensor_trace":
            h, g = split[(step, layer, "split_trace")], split[(step, layer, "split_ggn_trace")]
            assert r["probe_values"] == pytest.approx([a - b for a, b in zip(h["probe_values"], g["probe_values"])])
    assert all(abs(r["value"]) <= 6 * r["stderr"] + 1e-9 for r in split.values()  # F1: no tensor part on blocks
               if r["quantity"] == "split_tensor_trace")
    pairs = store.pairs(run_ids=[run_id(configs[6])])
    layers = len(set(inside["layer"].to_pylist()))
    assert pairs.num_rows == 2 * layers * layers  # step 22 only (33 is not a multiple of 22), two operators
    assert set(pairs["operator"].to_pylist()) == {"ggn", "tensor"} and set(pairs["step"].to_pylist()) == {22}
    assert {len(v) for v in pairs["probe_values"].to_pylist()} == {2}


def test_interrupted_run_resumes_to_exactly_the_uninterrupted_result(tmp_path, tiny_config):
    config = tiny_config("eta=0.4", "seed=3")
    reference = Store.open(str(tmp_path / "ref"), create=True)
    train(config, reference)

    store = Store.open(str(tmp_path / "s"), create=True)
    with pytest.raises(Crash):
        train(config, store, on_step=crash_at(17))  # mid epoch 2; the checkpoint is at step 11
    record = store.read_record(run_id(config))
    assert (record["status"], record["attempt"], record["step"]) == ("failed", 1, 11)
    assert "injected at step 17" in record["error"]
    assert max(store.snapshots()["step"].to_pylist()) == 10  # only committed data is visible

    # attempt 2 dies after writing epoch 2's chunks but before its checkpoint and commit
    real = store.write_checkpoint
    calls = []

    def failing_checkpoint(rid, data):
        calls.append(rid)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        real(rid, data)

    store.write_checkpoint = failing_checkpoint
    with pytest.raises(OSError, match="injected"):
        train(config, store)
    store.write_checkpoint = real
    failed = store.read_record(run_id(config))
    assert (failed["status"], failed["step"]) == ("failed", 22)  # epoch 2 committed, epoch 3's chunk orphaned
    assert "OSError: disk full (injected)" in failed["error"]

    summary = train(config, store)
    assert (summary["status"], summary["attempt"], summary["step"]) == ("done", 3, 33)
    assert_same_weights(final_weights(store, config), final_weights(reference, config))
    assert rows(store.snapshots()) == rows(reference.snapshots())
    assert rows(store.metrics()) == rows(reference.metrics())
    done = store.read_record(run_id(config))
    assert {k: v for k, v in done["final_metrics"].items() if "seconds" not in k} == \
        {k: v for k, v in reference.read_record(run_id(config))["final_metrics"].items() if "seconds" not in k}


def test_a_done_run_is_not_run_again(tmp_path, tiny_config):
    config = tiny_config("train.epochs=1")
    store = Store.open(str(tmp_path / "s"), create=True)
    first = train(config, store)
    files = sorted(p.name for p in (tmp_path / "s").rglob("*"))
    again = train(config, store, on_step=crash_at(1))  # would crash if it trained
    assert again == first and sorted(p.name for p in (tmp_path / "s").rglob("*")) == files


def test_epoch_metrics_measure_memorisation_of_the_corrupted_labels(tmp_path, tiny_config):
    store = Store.open(str(tmp_path / "s"), create=True)
    noisy, clean = tiny_config("eta=0.6", "train.epochs=2"), tiny_config("eta=0", "train.epochs=2")
    train(noisy, store)
    train(clean, store)
    epoch = store.metrics(scope="epoch")
    names = lambda rid: set(epoch.filter(pc.equal(epoch["run_id"], rid))["name"].to_pylist())  # noqa: E731
    assert names(run_id(noisy)) == {"train_loss", "train_acc", "test_loss", "test_acc", "memorised"}
    assert names(run_id(clean)) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    snap = store.metrics(scope="snapshot", run_ids=[run_id(noisy)])
    assert set(snap["name"].to_pylist()) == {"lr", "batch_loss", "grad_norm"}
    lrs = snap.filter(pc.equal(snap["name"], "lr"))["value"].to_pylist()
    assert lrs[0] == pytest.approx(0.05 * (1 + torch.cos(torch.tensor(torch.pi * 4 / 22)).item()))
    runs = store.runs()
    assert sorted(runs["role"].to_pylist()) == ["clean", "noisy"] and set(runs["head_layer"].to_pylist()) == {"linear"}


def test_non_finite_loss_fails_the_run_and_says_why(tmp_path, tiny_config):
    config = tiny_config("train.lr=1e30", "train.schedule=constant")
    store = Store.open(str(tmp_path / "s"), create=True)
    with pytest.raises(RunFailed, match="non-finite"):
        train(config, store)
    record = store.read_record(run_id(config))
    assert record["status"] == "failed" and "non-finite" in record["error"]
    assert store.snapshots().num_rows == 0  # readable, nothing half-written


def test_a_checkpoint_of_another_config_or_unreadable_fails_the_run_with_its_reason(tmp_path, tiny_config):
    store = Store.open(str(tmp_path / "s"), create=True)
    a, b = tiny_config("train.epochs=1"), tiny_config("train.epochs=1", "seed=1")
    train(a, store)
    store.write_checkpoint(run_id(b), store.read_checkpoint(run_id(a)))
    with pytest.raises(checkpoint.CheckpointError, match="different run config; refusing"):
        train(b, store)
    failed = store.read_record(run_id(b))
    assert failed["status"] == "failed" and "different run config" in failed["error"]
    assert store.read_record(run_id(a))["status"] == "done"
    store.write_checkpoint(run_id(b), b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint .*checkpoint.pt cannot be read.*sweep resume"):
        train(b, store)
    assert store.read_record(run_id(b))["attempt"] == 2


@pytest.mark.parametrize("override, reason", [
    (("runtime", "device", "cuda"), "RunFailed: runtime.device=cuda but this machine has no CUDA device"),
    (("dataset", "name", "cifar10"), "DatasetError: cifar10: expected"),
])
def test_a_set_up_failure_reaches_the_store_as_failed(tmp_path, tiny_config, override, reason):
    if torch.cuda.is_available() and override[2] == "cuda":
        pytest.skip("this machine has a CUDA device")
    config = tiny_config()
    section, key, value = override
    config[section][key] = value
    config["runtime"]["data_root"] = str(tmp_path / "no-data")
    store = Store.open(str(tmp_path / "s"), create=True)
    with pytest.raises(Exception):
        train(config, store)
    record = store.read_record(run_id(config))
    assert record["status"] == "failed" and record["error"].startswith(reason), record["error"]


@pytest.mark.parametrize(
    "override, message",
    [
        (("arch", "name", "resnet50"), "arch.name='resnet50' is not allowed: it must be one of resnet18"),
        (("dataset", "name", "svhn"), "dataset.name='svhn' is not allowed"),
        ((None, "eta", 1.0), r"eta=1.0 is not allowed: it must be a label-noise rate in \[0, 1\)"),
        ((None, "eta", -0.1), "eta=-0.1 is not allowed"),
        (("train", "lr", "fast"), "train.lr='fast' is not allowed: it must be a positive number"),
        (("train", "epoch", 3), "unknown key train.epoch; known keys of train: epochs"),
        (("dataset", "name", "cifar10"), "dataset cifar10 needs a data folder: pass runtime.data_root"),
        (("train", "batch_size", 100000), "train.batch_size=100000 exceeds the 1438 training images of digits"),
        (("monitor", "estimator", "exact"), "monitor.estimator='exact' is not allowed: it must be one of hessian, ggn"),
        (("monitor", "head", "closed"), "monitor.head='closed' is not allowed: it must be probes or exact"),
    ],
)
def test_bad_configs_are_refused_before_anything_is_written(tmp_path, tiny_config, override, message):
    config = tiny_config()
    section, key, value = override
    (config if section is None else config[section])[key] = value
    store = Store.open(str(tmp_path / "s"), create=True)
    with pytest.raises(RunConfigError, match=message):
        train(config, store)
    assert store.run_ids() == []


def test_a_run_on_cifar_format_data(tmp_path, tiny_config):
    _, md5, _ = cifar_archives.build("cifar10", tmp_path, per_file=32)
    datasets.download("cifar10", tmp_path, md5=md5)
    config = tiny_config("dataset=cifar10", f"runtime.data_root={tmp_path}", "arch.width=0.0625",
                         "train.batch_size=32", "train.epochs=1", "monitor.every=2", "monitor.batch_size=32")
    store = Store.open(str(tmp_path / "s"), create=True)
    summary = train(config, store)
    assert summary["step"] == 160 // 32
    snaps = store.snapshots(layer="linear", quantity="trace")
    assert snaps["step"].to_pylist() == [2, 4] and snaps["numel"].to_pylist() == [32 * 10 + 10] * 2


def test_a_run_into_s3_resumes_from_its_s3_checkpoint(tmp_path, tiny_config, s3_server):
    config = tiny_config("train.epochs=2", "eta=0.25")
    reference = Store.open(str(tmp_path / "ref"), create=True)
    train(config, reference)
    store = Store.open(s3_server(), create=True)
    with pytest.raises(Crash):
        train(config, store, on_step=crash_at(15))
    assert train(config, store)["attempt"] == 2
    assert_same_weights(final_weights(store, config), final_weights(reference, config))
    assert rows(store.snapshots()) == rows(reference.snapshots())


@pytest.mark.parametrize("overrides,message", [
    (("monitor.estimator=ggn", "monitor.block_frobenius=true"), "block_frobenius=true needs Hessian-vector products"),
    (("monitor.eigen.every=5", "monitor.eigen.layers=none", "monitor.eigen.network=false"), "nothing to compute"),
    (("monitor.eigen.every=5", "monitor.groups=parameter"), "monitor.eigen.layers=head names the head module"),
    (("monitor.eigen.k=11",), "max_matvecs=20 is below 2 k = 22"),
    (("monitor.eigen.every=-1",), "monitor.eigen.every=-1 is not allowed"),
    (("+monitor.eigen.evry=5",), "unknown key monitor.eigen.evry; known keys of monitor.eigen: every"),
    (("monitor.density.epochs=[1,9]",), "lists \\[9\\], after the last epoch train.epochs=3"),
    (("monitor.density.epochs=[0]",), "a list of distinct epoch numbers >= 1"),
    (("monitor.density.deflate=40",), "deflate=40 needs monitor.density.steps >= 80"),
    (("monitor.gauss_newton.num_probes=1",), "monitor.gauss_newton.num_probes=1 is not allowed: it must be an integer"),
    (("monitor.interlayer.design=rows",), "monitor.interlayer.design='rows' is not allowed: it must be one of walsh"),
    (("monitor.interlayer.operators=[hessian,hessian]",), "a non-empty list of distinct operators among hessian"),
    (("monitor.interlayer.operators=[]",), "a non-empty list of distinct operators"),
    (("monitor.head=exact", "monitor.groups=parameter"), "monitor.head=exact replaces the head module's row"),
])
def test_monitor_combinations_that_cannot_run_are_refused(tmp_path, tiny_config, overrides, message):
    store = Store.open(str(tmp_path / "s"), create=True)
    with pytest.raises(RunConfigError, match=message):
        train(tiny_config(*overrides), store)
    assert store.run_ids() == []


def test_the_monitor_estimator_keys_at_their_defaults_leave_run_ids_as_they_were(tiny_config):
    """Keys added after runs were stored: at the values that do what runs did before, the
    content (and so the run id) is the same as without them."""
    config = tiny_config()
    assert (config["monitor"]["estimator"], config["monitor"]["head"]) == ("hessian", "probes")
    older = {**config, "monitor": {k: v for k, v in config["monitor"].items() if k not in ("estimator", "head")}}
    assert run_id(older) == run_id(config) and content_json(older) == content_json(config)
    assert run_id(tiny_config("monitor.estimator=ggn")) != run_id(config)
    spectral = ("eigen", "density")
    older = {**config, "monitor": {k: v for k, v in config["monitor"].items() if k not in spectral}}
    assert run_id(older) == run_id(config)
    assert run_id(tiny_config("monitor.eigen.every=11")) != run_id(config)
    assert run_id(tiny_config("monitor.density.epochs=[1]")) != run_id(config)
    assert run_id(tiny_config("monitor.gauss_newton.every=11")) != run_id(config)
    newer = ("gauss_newton", "interlayer")
    older = {**config, "monitor": {k: v for k, v in config["monitor"].items() if k not in newer}}
    assert run_id(older) == run_id(config)


def small_mlp(*, num_classes, in_channels):
    """A model of one's own: F1 is not known for it."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * 64, 16), torch.nn.GELU(),
                               torch.nn.Linear(16, num_classes))


def test_a_user_models_output_space_values_are_stored_as_gauss_newton_traces(tmp_path, tiny_config):
    store = Store.open(str(tmp_path / "s"), create=True)
    probes, exact = (tiny_config("monitor.estimator=ggn", *extra) for extra in ([], ["monitor.head=exact"]))
    for config in (probes, exact):
        config["arch"] = {"_target_": f"{__name__}.small_mlp", "name": "mlp"}
        assert train(config, store)["status"] == "done"
    quantities = {(r["layer"], r["quantity"]) for r in store.snapshots(run_ids=[run_id(probes)]).to_pylist()}
    assert quantities == {("1", "ggn_trace"), ("3", "ggn_trace")}  # never called the trace
    quantities = {(r["layer"], r["quantity"]) for r in store.snapshots(run_ids=[run_id(exact)]).to_pylist()}
    # the head block is its Gauss-Newton block for any model: its exact rows are the trace
    assert quantities == {("1", "ggn_trace"), ("3", "trace"), ("3", "block_frobenius_sq"), ("3", "anisotropy")}
    assert store.runs().to_pylist()[0]["head_layer"] == "3"
