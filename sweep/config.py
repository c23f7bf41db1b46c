"""Hydra composition: command-line overrides to plain, resolved run configs.

This is the only place that turns ``conf/`` into dicts; a run receives the dict and
never sees Hydra (``workers.run_config`` validates it).
"""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
RUN_KEYS = ("arch", "dataset", "train", "monitor", "eta", "seed", "noise_seed", "runtime")


class ConfigError(ValueError):
    """Overrides that do not compose; the message names the problem and the fix."""


def compose_config(overrides: list[str]) -> dict:
    """The root config with ``overrides`` applied, resolved to plain Python values."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as err:
        # Hydra's own hint to append a key with `+` does not apply: a run refuses unknown keys.
        text = str(err).split("To append")[0].split("Config search path")[0]
        message = " ".join(line.strip() for line in text.splitlines() if line.strip())
        raise ConfigError(
            f"{message}\nOverrides are key=value (for example arch=vgg11 eta=0.25 "
            f"train.epochs=5); groups and options live in {CONF_DIR}."
        ) from None


def run_config(composed: dict) -> dict:
    """The part of a composed config that one run receives."""
    return {key: composed[key] for key in RUN_KEYS}
