"""The resolved config of one run: its shape, its validation, and its identity.

A run receives a plain nested dict (Hydra resolves it in ``sweep``; nothing here
imports Hydra). Everything except the ``runtime`` section is the run's *content*:
what it computes. The run id is a hash of the content, so the same run launched
twice is one run, and a changed config is a new run, never mixed with an old one.
``runtime`` holds where and how it runs (data folder, device, threads, sweep id,
import path, the sweep's axis values), which must not change what it computes.

``arch`` and ``dataset`` name a built-in (``name``) or a user's callable
(``_target_``); either way their other keys are the callable's keyword arguments,
checked against its signature (``workers.models.architecture``, ``workers.datasets.dataset``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re

from workers.curvature.blocks import DESIGNS as BLOCK_DESIGNS
from workers.curvature.blocks import OPERATORS as BLOCK_OPERATORS
from workers.curvature.hvp import MECHANISMS
from workers.curvature.probes import DISTRIBUTIONS
from workers.datasets import DatasetError, dataset
from workers.models import ModelError, architecture
from workers.targets import TargetError, add_import_paths

ESTIMATORS = ("hessian", "ggn")  # monitor.estimator: workers.curvature.layerwise_trace or ggn_trace


class RunConfigError(ValueError):
    """A run config that cannot run; the message names the key and the fix."""


# section -> key -> (type or types, check, what is allowed). A key not listed is a
# typo, and is refused rather than silently ignored.
_POSITIVE_INT = (int, lambda v: v > 0, "a positive integer")
_POSITIVE = ((int, float), lambda v: v > 0, "a positive number")
_NON_NEGATIVE = ((int, float), lambda v: v >= 0, "a number >= 0")
_BOOL = (bool, lambda v: True, "true or false")
_NAME = (str, lambda v: bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.]*", v)),
         "letters, digits, _ and . (it is part of every run id)")
# arch and dataset: a built-in by name, or a user's `_target_` whose other keys are its
# keyword arguments, checked against its signature (workers/targets.py).
ARCH = {"name": _NAME, "head": ((str, type(None)), lambda v: True, "a module name of the model, or null"),
        "width": _POSITIVE}  # width: the built-in models' only option
DATASET = {"name": _NAME, "crop_padding": (int, lambda v: v >= 0, "an integer >= 0"), "flip": _BOOL}
DATASET_DEFAULTS = {"crop_padding": 0, "flip": False}  # no augmentation unless asked
SCHEMA = {
    "train": {
        "epochs": _POSITIVE_INT,
        "batch_size": _POSITIVE_INT,
        "lr": _POSITIVE,
        "momentum": ((int, float), lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "weight_decay": _NON_NEGATIVE,
        "schedule": (str, lambda v: v in ("cosine", "constant"), "cosine or constant"),
        "checkpoint_every": _POSITIVE_INT,
        "eval_every": _POSITIVE_INT,
        "channels_last": _BOOL,
        "bf16": _BOOL,
    },
    "monitor": {
        "enabled": _BOOL,
        "every": _POSITIVE_INT,
        "batch_size": _POSITIVE_INT,
        "num_probes": (int, lambda v: v >= 2, "an integer >= 2 (the standard error needs two probes)"),
        "distribution": (str, lambda v: v in DISTRIBUTIONS, f"one of {', '.join(DISTRIBUTIONS)}"),
        "groups": (str, lambda v: v in ("module", "parameter"), "module or parameter"),
        "hvp": (str, lambda v: v in MECHANISMS, f"one of {', '.join(MECHANISMS)}"),
        "block_frobenius": _BOOL,
        "estimator": (str, lambda v: v in ESTIMATORS, f"one of {', '.join(ESTIMATORS)}"),
        "head": (str, lambda v: v in ("probes", "exact"), "probes or exact"),
        "eigen": (dict, lambda v: True, "a mapping (monitor.eigen.*)"),
        "density": (dict, lambda v: True, "a mapping (monitor.density.*)"),
        "gauss_newton": (dict, lambda v: True, "a mapping (monitor.gauss_newton.*)"),
        "interlayer": (dict, lambda v: True, "a mapping (monitor.interlayer.*)"),
    },
    "runtime": {
        "data_root": ((str, type(None)), lambda v: True, "a folder path or null"),
        "device": (str, lambda v: v in ("auto", "cpu") or v.startswith("cuda"), "auto, cpu or cuda[:N]"),
        "threads": ((int, type(None)), lambda v: v is None or v > 0, "a positive integer or null"),
        "sweep_id": ((str, type(None)), lambda v: True, "a string or null"),
        "pythonpath": ((list, type(None)), lambda v: v is None or all(isinstance(p, str) for p in v),
                       "a list of folders or null"),
        "axes": (dict, lambda v: all(isinstance(k, str) for k in v), "a mapping of dotted keys to values"),
    },
}
_BLOCKS = (str, lambda v: v in ("head", "all", "none"), "head, all or none")
# Sub-sections: (section, key) -> their keys' rules, checked like a section's.
SUBSECTIONS = {
    ("monitor", "eigen"): {  # workers.curvature.top_eigenvalues every `every` steps (0: off)
        "every": (int, lambda v: v >= 0, "an integer >= 0 (steps between eigenvalue snapshots; 0: off)"),
        "layers": _BLOCKS,
        "network": _BOOL,
        "k": _POSITIVE_INT,
        "max_matvecs": (int, lambda v: v >= 2, "an integer >= 2"),
        "tol": _POSITIVE,
    },
    ("monitor", "density"): {  # workers.curvature.spectral_density after the listed epochs ([]: off)
        "epochs": (list, lambda v: all(isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in v)
                   and len(set(v)) == len(v), "a list of distinct epoch numbers >= 1 (empty: off)"),
        "layers": _BLOCKS,
        "network": _BOOL,
        "steps": (int, lambda v: v >= 2, "an integer >= 2"),
        "num_runs": _POSITIVE_INT,
        "deflate": (int, lambda v: v >= 0, "an integer >= 0"),
    },
    ("monitor", "gauss_newton"): {  # workers.curvature.gauss_newton_split every `every` steps (0: off)
        "every": (int, lambda v: v >= 0, "an integer >= 0 (steps between split snapshots; 0: off)"),
        "num_probes": (int, lambda v: v >= 2, "an integer >= 2 (the standard error needs two probes)"),
    },
    ("monitor", "interlayer"): {  # workers.curvature.interlayer_blocks every `every` steps (0: off)
        "every": (int, lambda v: v >= 0, "an integer >= 0 (steps between pair snapshots; 0: off)"),
        "num_probes": _POSITIVE_INT,
        "design": (str, lambda v: v in BLOCK_DESIGNS, f"one of {', '.join(BLOCK_DESIGNS)}"),
        "operators": (list, lambda v: bool(v) and len(set(v)) == len(v) and all(o in BLOCK_OPERATORS for o in v),
                      f"a non-empty list of distinct operators among {', '.join(BLOCK_OPERATORS)}"),
    },
}
# Keys added after runs were first stored, with the value that does what runs did before
# them: a config without them (an older manifest) gets these, and at these values the
# monitor's keys are left out of the run's content, so every stored run keeps its id.
ADDED_DEFAULTS = {
    "runtime": {"pythonpath": None, "axes": {}},
    "monitor": {
        "estimator": "hessian", "head": "probes",
        "eigen": {"every": 0, "layers": "head", "network": True, "k": 1, "max_matvecs": 20, "tol": 1e-3},
        "density": {"epochs": [], "layers": "head", "network": True, "steps": 64, "num_runs": 1, "deflate": 0},
        "gauss_newton": {"every": 0, "num_probes": 10},
        "interlayer": {"every": 0, "num_probes": 1, "design": "columns", "operators": ["hessian"]},
    },
}
TOP_LEVEL = {
    "eta": ((int, float), lambda v: 0 <= v < 1, "a label-noise rate in [0, 1); the paper uses 0, 0.25, 0.40, 0.60"),
    "seed": (int, lambda v: v >= 0, "an integer >= 0"),
    "noise_seed": ((int, type(None)), lambda v: v is None or v >= 0, "an integer >= 0, or null to use seed"),
}


def _check(where: str, value, rule) -> None:
    types, ok, allowed = rule
    # bool is an int in Python; only a bool rule admits it
    if isinstance(value, bool) and types is not bool:
        ok_type = False
    else:
        ok_type = isinstance(value, types)
    if not ok_type or not ok(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise RunConfigError(f"{where}={value!r} is not allowed: it must be {allowed}")


def validate(config: dict) -> dict:
    """Check every key of a run config; return a deep copy with the defaults filled in.
    Raises RunConfigError. A ``_target_`` is imported (from ``runtime.pythonpath`` too)."""
    if not isinstance(config, dict):
        raise RunConfigError(f"a run config is a mapping, got {type(config).__name__}")
    known = set(SCHEMA) | set(TOP_LEVEL) | {"arch", "dataset"}
    for key in config:
        if key not in known:
            raise RunConfigError(f"unknown key {key!r} in the run config; known keys: {', '.join(sorted(known))}")
    for key, rule in TOP_LEVEL.items():
        if key not in config:
            raise RunConfigError(f"the run config has no {key!r}: pass {key}=... ")
        _check(key, config[key], rule)
    config = copy.deepcopy(config)
    for section in (*SCHEMA, "arch", "dataset"):
        if not isinstance(config.get(section), dict):
            raise RunConfigError(f"the run config has no {section!r} section")
    for section, defaults in ADDED_DEFAULTS.items():
        config[section] = {**defaults, **config[section]}
    for (section, key), rules in SUBSECTIONS.items():
        values = config[section][key]
        if not isinstance(values, dict):
            raise RunConfigError(f"{section}.{key}={values!r} is not allowed: it must be a mapping of "
                                 f"{', '.join(rules)}")
        config[section][key] = values = {**ADDED_DEFAULTS[section][key], **values}
        for name, value in values.items():
            if name not in rules:
                raise RunConfigError(f"unknown key {section}.{key}.{name}; known keys of {section}.{key}: "
                                     f"{', '.join(rules)}")
            _check(f"{section}.{key}.{name}", value, rules[name])
    for section, rules in SCHEMA.items():
        values = config[section]
        for key in values:
            if key not in rules:
                raise RunConfigError(
                    f"unknown key {section}.{key}; known keys of {section}: {', '.join(rules)}"
                )
        for key, rule in rules.items():
            if key not in values:
                raise RunConfigError(f"the run config has no {section}.{key}")
            _check(f"{section}.{key}", values[key], rule)
    add_import_paths(config["runtime"]["pythonpath"])
    _arch(config["arch"])
    entry = _dataset(config["dataset"])
    name = config["dataset"]["name"]
    if entry.needs_root and not config["runtime"]["data_root"]:
        raise RunConfigError(
            f"dataset {name} needs a data folder: pass runtime.data_root=DIR "
            f"(fill it with `sweep data download dataset={name} root=DIR`)"
        )
    if entry.train_size is not None:  # a user's dataset: checked once loaded (sweep.grid.preflight, the worker)
        check_batch_sizes(config, entry.train_size)
    monitor = config["monitor"]
    if monitor["estimator"] == "ggn" and monitor["block_frobenius"]:
        raise RunConfigError("monitor.block_frobenius=true needs Hessian-vector products: use it with "
                             "monitor.estimator=hessian")
    if monitor["head"] == "exact" and monitor["groups"] != "module":
        raise RunConfigError("monitor.head=exact replaces the head module's row, which needs monitor.groups=module")
    _check_spectral(config)
    return config


def _check_spectral(config: dict) -> None:
    eigen, density = config["monitor"]["eigen"], config["monitor"]["density"]
    for key, values, on in (("eigen", eigen, eigen["every"] > 0), ("density", density, bool(density["epochs"]))):
        if on and values["layers"] == "none" and not values["network"]:
            raise RunConfigError(f"monitor.{key} has layers=none and network=false: nothing to compute; set "
                                 f"monitor.{key}.layers=head|all or monitor.{key}.network=true")
        if on and values["layers"] == "head" and config["monitor"]["groups"] != "module":
            raise RunConfigError(f"monitor.{key}.layers=head names the head module's group, which needs "
                                 f"monitor.groups=module (or use layers=all)")
    if eigen["max_matvecs"] < 2 * eigen["k"]:
        raise RunConfigError(f"monitor.eigen.max_matvecs={eigen['max_matvecs']} is below 2 k = {2 * eigen['k']}: "
                             "Lanczos needs about two products per eigenvalue at each end")
    late = [e for e in density["epochs"] if e > config["train"]["epochs"]]
    if late:
        raise RunConfigError(f"monitor.density.epochs lists {late}, after the last epoch "
                             f"train.epochs={config['train']['epochs']}")
    if 2 * density["deflate"] > density["steps"]:
        raise RunConfigError(f"monitor.density.deflate={density['deflate']} needs monitor.density.steps >= "
                             f"{2 * density['deflate']}")


def _named(section: str, values: dict) -> None:
    """A ``_target_`` section is named after its callable unless it says otherwise."""
    if "_target_" in values and "name" not in values and isinstance(values["_target_"], str):
        values["name"] = values["_target_"].rpartition(".")[2]
    if "name" not in values:
        raise RunConfigError(f"the run config has no {section}.name (or {section}._target_=package.module.name)")


def _options(section: str, values: dict, rules: dict, reserved: tuple[str, ...]) -> None:
    for key, rule in rules.items():
        if key in values:
            _check(f"{section}.{key}", values[key], rule)
    for key, value in values.items():
        if key not in reserved:
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise RunConfigError(f"{section}.{key}={value!r} is not allowed: it must be a number, a string, "
                                     "true/false, null, or a list or mapping of those") from None


def _arch(arch: dict) -> None:
    _named("arch", arch)
    _options("arch", arch, ARCH if "_target_" not in arch else {"name": _NAME, "head": ARCH["head"]},
             ("name", "_target_", "head"))
    try:
        architecture(arch)
    except (ModelError, TargetError) as err:
        raise RunConfigError(str(err)) from None


def _dataset(values: dict):
    _named("dataset", values)
    for key, default in DATASET_DEFAULTS.items():
        values.setdefault(key, default)
    if "_target_" not in values:
        for key in values:
            if key not in DATASET:
                raise RunConfigError(f"unknown key dataset.{key}; known keys of dataset: {', '.join(DATASET)} "
                                     "(a dataset._target_ loader takes its own keyword arguments)")
    _options("dataset", values, DATASET, ("name", "_target_"))
    try:
        return dataset(values)
    except (DatasetError, TargetError) as err:
        raise RunConfigError(str(err)) from None


def check_batch_sizes(config: dict, train_size: int) -> None:
    """Raise RunConfigError when a batch is larger than the training set."""
    for key in ("train", "monitor"):
        if config[key]["batch_size"] > train_size:
            raise RunConfigError(
                f"{key}.batch_size={config[key]['batch_size']} exceeds the {train_size} training images of "
                f"{config['dataset']['name']}; use at most {train_size}"
            )


def content(config: dict) -> dict:
    """The part of a run config that decides what the run computes: all but ``runtime``,
    and without the monitor keys that are at their ADDED_DEFAULTS.

    >>> content({"monitor": {"every": 10, "estimator": "hessian"}, "runtime": {}})
    {'monitor': {'every': 10}}
    >>> content({"monitor": {"every": 10, "estimator": "ggn"}})
    {'monitor': {'every': 10, 'estimator': 'ggn'}}
    """
    kept = {key: value for key, value in config.items() if key != "runtime"}
    added = ADDED_DEFAULTS["monitor"]
    if isinstance(kept.get("monitor"), dict):
        kept["monitor"] = {k: v for k, v in kept["monitor"].items() if not (k in added and v == added[k])}
    return kept


def content_json(config: dict) -> str:
    """Canonical JSON of the content: sorted keys, no spaces, floats as Python writes them."""
    return json.dumps(content(config), sort_keys=True, separators=(",", ":"))


def run_id(config: dict) -> str:
    """A readable, content-addressed run id: ``arch-dataset-eta-seed-hash``.

    >>> a = {"arch": {"name": "vgg11"}, "dataset": {"name": "digits"}, "eta": 0.25, "seed": 3}
    >>> run_id(a)[:24]
    'vgg11-digits-eta0.25-s3-'
    >>> run_id(a) == run_id({**a, "runtime": {"device": "cuda"}})
    True
    """
    digest = hashlib.sha256(content_json(config).encode()).hexdigest()[:12]
    return f"{config['arch']['name']}-{config['dataset']['name']}-eta{config['eta']:.2f}-s{config['seed']}-{digest}"


def role(config: dict) -> str:
    """``clean`` for the calibration ensemble (eta = 0), else ``noisy``."""
    return "clean" if config["eta"] == 0 else "noisy"


def configuration(config: dict) -> str:
    """What a run shares with the runs it is compared with: a hash of its content minus
    eta, seed and noise_seed. The analysis calibrates and tabulates per configuration, so
    runs that differ in anything else (the learning rate, the epochs) are never pooled.

    >>> a = {"arch": {"name": "vgg11"}, "dataset": {"name": "digits"}, "train": {"lr": 0.1}, "eta": 0.0, "seed": 0,
    ...      "noise_seed": None}
    >>> configuration(a) == configuration({**a, "eta": 0.4, "seed": 7, "runtime": {"device": "cpu"}})
    True
    >>> configuration(a)[:13]
    'vgg11-digits-'
    >>> configuration(a) == configuration({**a, "train": {"lr": 0.05}})
    False
    """
    shared = {key: value for key, value in content(config).items() if key not in ("eta", "seed", "noise_seed")}
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    return f"{config['arch']['name']}-{config['dataset']['name']}-{digest}"


def identity(config: dict) -> dict:
    """Who the run is, as its store record says (``store.schema.IDENTITY``)."""
    return {
        "run_id": run_id(config), "sweep_id": config["runtime"]["sweep_id"], "configuration": configuration(config),
        "arch": config["arch"]["name"], "dataset": config["dataset"]["name"], "eta": float(config["eta"]),
        "seed": config["seed"], "role": role(config), "head_layer": architecture(config["arch"]).head,
        "config": json.dumps(config, sort_keys=True),
        "axes": {key: json.dumps(value) for key, value in (config["runtime"].get("axes") or {}).items()},
    }
