"""`hydra/launcher=ray_jobs`: the jobs of a multirun on Ray, several at once.

    fedguard run -m seed=0,1,2,3 hydra/launcher=ray_jobs                  # this machine, all cores
    fedguard run -m seed=0,1,2,3 hydra/launcher=ray_jobs hydra.launcher.num_cpus=8
    fedguard run -m seed=0,1,2,3 hydra/launcher=ray_jobs hydra.launcher.address=HOST:6379

The sweep has slots: as many placement groups of `actors_per_job` bundles of the jobs'
`backend.client_resources` (STRICT_PACK: each on one node) as the Ray instance holds (a local
one capped at `num_cpus`, or the cluster's nodes), or `max_parallel`. Each slot has a runner
(a Ray actor in its group, no CPU of its own) that runs jobs one after another: the job's
ServerApp in the runner, its client actors in the group, kept by the runner for its next job
(`fedguard/ray_session.py`). A slot takes the next job as soon as its job ends, so the sweep
runs as many jobs at once as there are slots, spread over the cluster's nodes, and Ray and
the actors start once per slot, not per job. A job's records are those of the same job run
alone with the same client actors (`actors_per_job` of them: a job alone with
`backend.init_args.num_cpus` = actors_per_job x client CPUs). Jobs with other client resources
than the first get their own slots after it.
"""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class RayJobsLauncherConf:
    _target_: str = "hydra_plugins.fedguard_launcher.ray_jobs.RayJobsLauncher"
    # (no `from __future__ import annotations` here: Hydra's plugin scan loads this module
    # outside sys.modules, where dataclasses cannot resolve string annotations)
    address: Optional[str] = None  # an existing Ray cluster (host:port or "auto"); null: a local instance
    num_cpus: Optional[int] = None  # the local instance's CPUs: the sweep's cap (null: all cores)
    actors_per_job: int = 1  # client actors of each job (each backend.client_resources)
    max_parallel: Optional[int] = None  # jobs at once (null: as many as the CPUs hold)


ConfigStore.instance().store(group="hydra/launcher", name="ray_jobs", node=RayJobsLauncherConf,
                             provider="fedguard")


@dataclass
class _Exit:
    code: object


class _JobRunner:
    """A slot's runner (a Ray actor in the slot's placement group): runs jobs one by one,
    its client actors capped at the slot's bundles and kept between jobs."""

    def __init__(self, actors: int) -> None:
        from fedguard import ray_session

        ray_session.JOB_ACTORS = actors

    def run(self, hydra_context, task_function, config, singleton_state):
        setup_globals()
        Singleton.set_state(singleton_state)
        try:
            return run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                           job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        except SystemExit as stop:  # the job's exit code (2: config error, 130: Ctrl-C) for the
            return _Exit(stop.code)  # driver: raised here, SystemExit would end the runner


def slots_that_fit(bundle: dict, bundles: int) -> int:
    """How many groups of `bundles` x `bundle` the alive nodes hold, each on one node."""
    import ray

    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        per_node = min(int(have.get(k, 0.0) // v) for k, v in bundle.items() if v > 0)
        total += per_node // bundles
    return total


class RayJobsLauncher(Launcher):
    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None,
                 actors_per_job: int = 1, max_parallel: Optional[int] = None) -> None:
        self.address, self.num_cpus = address, num_cpus
        self.actors_per_job, self.max_parallel = max(1, int(actors_per_job)), max_parallel
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def init_args(self) -> dict:
        if self.address:
            return {"address": self.address}
        return {"address": "local", "num_cpus": self.num_cpus or os.cpu_count() or 1}

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from fedguard.ray_session import SESSION

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        SESSION.ensure({**self.init_args(), "logging_level": "WARNING", "log_to_driver": False})
        groups: dict[tuple, list] = {}  # client resources -> [(job index, config)]
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            res = cfg.backend.client_resources
            bundle = (("CPU", float(res.num_cpus)),) + ((("GPU", float(res.num_gpus)),) if res.num_gpus else ())
            groups.setdefault(bundle, []).append((idx, cfg))
        results: dict[int, JobReturn] = {}
        for bundle, jobs in groups.items():
            results.update(self._run_on_slots(dict(bundle), jobs))
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [results[i] for i in sorted(results)]

    def _run_on_slots(self, bundle: dict, jobs: list) -> dict:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        fit = slots_that_fit(bundle, self.actors_per_job)
        if fit < 1:
            raise RuntimeError(f"hydra.launcher.actors_per_job={self.actors_per_job} actors of {bundle} do not fit "
                               f"on any node of the Ray instance ({ray.cluster_resources()})")
        count = min(len(jobs), fit, self.max_parallel or fit)
        log.info(f"Launching {len(jobs)} jobs on {count} slots of {self.actors_per_job} x {bundle}")
        pgs = [placement_group([bundle] * self.actors_per_job, strategy="STRICT_PACK") for _ in range(count)]
        runner_cls = ray.remote(_JobRunner)
        runners = []
        try:
            ray.get([pg.ready() for pg in pgs])
            runners = [runner_cls.options(num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)).remote(
                self.actors_per_job) for pg in pgs]
            queue, free, running, results = list(jobs), list(runners), {}, {}
            while queue or running:
                while queue and free:
                    idx, cfg = queue.pop(0)
                    runner = free.pop(0)
                    ref = runner.run.remote(self.hydra_context, self.task_function, cfg, Singleton.get_state())
                    running[ref] = (idx, runner)
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    idx, runner = running.pop(ref)
                    results[idx] = ray.get(ref)
                    free.append(runner)
                    if isinstance(results[idx], _Exit):  # as a job run in this process would: the sweep ends
                        raise SystemExit(results[idx].code)
            return results
        finally:
            for runner in runners:
                try:
                    ray.kill(runner)
                except Exception:  # noqa: BLE001 - Ray already gone
                    pass
            for pg in pgs:
                try:
                    remove_placement_group(pg)
                except Exception:  # noqa: BLE001
                    pass
