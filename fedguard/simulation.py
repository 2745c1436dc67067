"""In-process launcher: Flower's simulation runtime on Ray, with the flattened config.

`flwr run .` fuses `[tool.flwr.app.config]` of pyproject.toml into `context.run_config`.
To give both launchers one code path, this launcher writes the flattened config of the
Hydra run into a throwaway Flower app directory and hands that directory to the runtime,
so every ClientApp and the ServerApp see the same `context.run_config`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from flwr.app import Context, RecordDict
from omegaconf import DictConfig

from fedguard.config import flatten, flwr_app_config_toml
from fedguard.interrupt import stop_on_sigint


def backend_config(cfg: DictConfig) -> dict:
    """Flower's backend_config from `cfg.backend` (None values left out).

    Without an address the run starts its own Ray instance (`address="local"`): a bare
    `ray.init()` would attach to any cluster already running on the machine (a `ray start`
    head, or another job's instance) and then refuse the `num_cpus` cap."""
    res = cfg.backend.client_resources
    init = {k: v for k, v in cfg.backend.init_args.items() if v is not None}
    if "address" not in init:
        init["address"] = "local"
        init.setdefault("num_cpus", os.cpu_count() or 1)  # explicit: never let Ray guess
    return {"client_resources": {"num_cpus": float(res.num_cpus), "num_gpus": float(res.num_gpus)},
            "init_args": init}


def write_app_dir(directory: Path, cfg: DictConfig) -> Path:
    """A minimal Flower app (pyproject.toml) whose run config is `flatten(cfg)`."""
    header = ('[project]\nname = "fedguard-run"\nversion = "0.1.0"\n\n'
              '[tool.flwr.app]\npublisher = "fedguard"\n\n[tool.flwr.app.components]\n'
              'serverapp = "fedguard.server_app:app"\nclientapp = "fedguard.client_app:app"\n\n')
    (directory / "pyproject.toml").write_text(header + flwr_app_config_toml(cfg))
    return directory


def run_simulation(cfg: DictConfig, verbose: bool = False) -> None:
    """Run the simulation of `cfg` to its end; Ctrl-C stops it between rounds and raises
    `interrupt.RunInterrupted` (see fedguard/interrupt.py).

    Ray and the client actors are the process's (`fedguard/ray_session.py`): the runs of a
    Hydra multirun start them once and reuse them."""
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from fedguard import ray_session
    from fedguard.client_app import app as client_app
    from fedguard.ray_session import SESSION, flower_uses, shared_ray_backend
    from fedguard.server_app import app as server_app
    from fedguard.supernodes import resolve_supernodes

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    flat = flatten(cfg)
    supernodes = resolve_supernodes(cfg)  # before Ray starts: it may refuse the config
    backend = backend_config(cfg)
    backend["init_args"].setdefault("logging_level", "WARNING")  # Flower's default, set before Ray starts
    SESSION.ensure(backend["init_args"])
    with tempfile.TemporaryDirectory(prefix="fedguard-app-") as tmp, stop_on_sigint(), \
            flower_uses(shared_ray_backend(ray_session.JOB_ACTORS)):
        app_dir = write_app_dir(Path(tmp), cfg)
        context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=dict(flat))
        try:
            _run_simulation(
                num_supernodes=supernodes.count,
                exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                client_app=client_app,
                server_app=server_app,
                backend_name="ray",
                backend_config=backend,
                server_app_context=context,
                app_dir=str(app_dir),
                is_app=True,  # makes the runtime fuse the app dir's config into run_config
                verbose_logging=verbose,
            )
        except BaseException:
            SESSION.discard_pools()  # a failed or interrupted run's actors are not reused
            raise
