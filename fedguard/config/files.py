"""The config files: `configs/` composed as `fedguard run` composes it, and the config a
resumed run continues with (its run directory's `config.yaml`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedguard.config.schema import FedGuardConfig, register_schema

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# keys that may differ between a run and its resumption
RESUME_FREE_KEYS = ("resume", "run_dir", "progress")


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The composed config for `overrides`, as `fedguard run` would see it (no validation)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def resume_config(run_dir: str | Path) -> DictConfig:
    """The config to continue the run in `run_dir`: its saved `config.yaml` (the pre-flight
    refuses an override of the resuming command that would change it), with `resume` and
    `run_dir` set to it."""
    saved = OmegaConf.load(Path(run_dir) / "config.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(FedGuardConfig), saved)
    cfg.resume = str(run_dir)
    cfg.run_dir = str(run_dir)
    return cfg
