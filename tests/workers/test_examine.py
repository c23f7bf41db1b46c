"""`sweep curvature`: the spectrum of one stored run at its checkpoint."""

import torch

from store import Store
from sweep.grid import expand
from workers import checkpoint
from workers.curvature import head_curvature
from workers.data import normalise, place
from workers.datasets import load_dataset
from workers.examine import examine
from workers.models import build_model
from workers.run_config import content_json, validate
from workers.seeds import generator
from workers.train import snapshot_images, train


def test_a_stored_runs_spectrum_at_its_checkpoint(tmp_path, sweep_cli):
    store = Store.open(str(tmp_path / "s"), create=True)
    config = next(iter(expand(["experiment=smoke"]).runs.values()))
    summary = train(config, store)
    examined = examine(store, summary["run_id"], layers="head", k=2, max_matvecs=60, tol=1e-4)
    assert examined.step == summary["step"] and examined.eigen.layers == ["(network)", "classifier"]
    # whether or not the head's clustered smallest pair converged, each Ritz value is within its residual
    # the head block's exact spectrum (closed form, F2) of the same model on the same snapshot batch
    config = validate(config)
    images = load_dataset(config["dataset"], None)
    data = place(images, eta=config["eta"], device=torch.device("cpu"),
                 noise_generator=generator("label-noise", "digits", config["eta"], config["seed"]))
    model, head = build_model(config["arch"], num_classes=10, in_channels=1)
    model.load_state_dict(checkpoint.from_bytes(store.read_checkpoint(summary["run_id"]),
                                                content_json=content_json(config), where="")["model"])
    x, _ = snapshot_images(data, seed=config["seed"], step=examined.step, batch_size=examined.batch_size)
    exact = head_curvature(model, normalise(x, data.mean, data.std), head=head).eigenvalues
    found, residuals = examined.eigen.largest[1], examined.eigen.residuals[1, 0]
    assert torch.all((found - exact.flip(0)[:2].to(found)).abs() <= residuals + 1e-5 * exact.max())  # float32
    assert examined.eigen.lambda_max[0] >= examined.eigen.lambda_max[1]  # interlacing

    out = sweep_cli("curvature", f"store={tmp_path / 's'}", f"run={summary['run_id']}", "steps=16",
                    f"out={tmp_path / 'd.png'}")
    assert out.returncode == 0, out.stderr
    assert f"at step {summary['step']}" in out.stdout and "(network)" in out.stdout and "classifier" in out.stdout
    assert (tmp_path / "d.png").stat().st_size > 0
    missing = sweep_cli("curvature", f"store={tmp_path / 's'}", "run=nope")
    assert missing.returncode == 2 and "no run nope in" in missing.stderr and "Traceback" not in missing.stderr
    bad = sweep_cli("curvature", f"store={tmp_path / 's'}", f"run={summary['run_id']}", "layers=some")
    assert bad.returncode == 2 and "layers=some is not one of head, all, none" in bad.stderr
