"""Hydra composition: command-line overrides to plain, resolved run configs.

This is the only place that turns ``conf/`` into dicts; a run receives the dict and
never sees Hydra (``workers.run_config`` validates it). ``--config-dir DIR`` adds a
user's folder of presets, models and datasets beside the built-in groups (Hydra's
search path), and puts DIR on the runs' import path for their ``_target_`` modules.
"""

from __future__ import annotations

from pathlib import Path

# Installed (pip install ., the Docker image): conf/ ships as sweep/conf. A checkout: conf/.
_HERE = Path(__file__).resolve().parent
CONF_DIR = next((p for p in (_HERE / "conf", _HERE.parent / "conf") if (p / "config.yaml").is_file()),
                _HERE.parent / "conf")
RUN_KEYS = ("arch", "dataset", "train", "monitor", "eta", "seed", "noise_seed", "runtime")


class ConfigError(ValueError):
    """Overrides that do not compose; the message names the problem and the fix."""


def config_dir(value: str | None) -> Path | None:
    """A ``--config-dir`` checked: an existing folder, absolute (the runs may start elsewhere)."""
    if value is None:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--config-dir {value}: no such folder; it should hold experiment/NAME.yaml and, as "
                          "needed, arch/*.yaml and dataset/*.yaml (see the README's own-sweep example)")
    return path


def compose_config(overrides: list[str], *, user_dir: Path | None = None) -> dict:
    """The root config with ``overrides`` applied, resolved to plain Python values; with
    ``user_dir``, its groups are found beside (and before) the built-in ones, and the runs
    get it in ``runtime.pythonpath``."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    search = [f"hydra.searchpath=[file://{user_dir}]"] if user_dir else []
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*search, *overrides])
        composed = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as err:
        # Hydra's own hint to append a key with `+` does not apply: a run refuses unknown keys.
        text = str(err).split("To append")[0].split("Config search path")[0]
        message = " ".join(line.strip() for line in text.splitlines() if line.strip())
        where = f"{CONF_DIR} and {user_dir}" if user_dir else f"{CONF_DIR} (or a folder of your own: --config-dir DIR)"
        raise ConfigError(
            f"{message}\nOverrides are key=value (for example arch=vgg11 eta=0.25 "
            f"train.epochs=5); groups and options live in {where}."
        ) from None
    if user_dir:
        runtime = composed.setdefault("runtime", {})
        runtime["pythonpath"] = [str(user_dir), *[p for p in runtime.get("pythonpath") or [] if p != str(user_dir)]]
    return composed


def run_config(composed: dict) -> dict:
    """The part of a composed config that one run receives."""
    return {key: composed[key] for key in RUN_KEYS}
