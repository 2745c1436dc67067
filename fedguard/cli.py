"""The `fedguard` command: `run`, `report`, `list` (see `USAGE`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

# when the current job started: the command's start for the first job (its wall time includes
# the imports and Hydra's start-up), the end of the previous job of a multirun for the next
_job_started = time.perf_counter()
USAGE = """usage: fedguard COMMAND ...

Federated-learning simulations of poisoned data streams and the defenses against them
(Flower apps on Ray, configured by Hydra).

commands:
  run [OVERRIDES...]      run one experiment, or a sweep with -m (Hydra overrides such as
                          attack=accumulative defense=mddsc num_malicious=2); `fedguard run
                          --help` shows the composed config; `resume=RUN_DIR` continues a run
  report RUN_DIR...       compare finished runs: table, comparison.csv and comparison.png
  list [KIND [NAME]]      the attacks, defenses, sanitizers, stream poisons, datasets, models
                          and partitioners, one line each; with NAME, its knobs and defaults

options:
  -h, --help              this message
  --version               the installed version
"""

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def _hydra_run() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from fedguard.config import ConfigError, register_schema, resume_config, validate

    register_schema()

    @hydra.main(config_path=CONFIG_DIR, config_name="config", version_base=None)
    def task(cfg: DictConfig) -> float | None:
        try:
            validate(cfg)
            if cfg.resume:  # continue RUN_DIR with its saved config (the pre-flight refused changes)
                progress = cfg.progress
                cfg = resume_config(cfg.resume)
                cfg.progress = progress
                validate(cfg)
        except ConfigError as err:
            print(err, file=sys.stderr)
            raise SystemExit(2) from None
        OmegaConf.set_struct(cfg, False)
        if not cfg.resume:
            cfg.run_dir = HydraConfig.get().runtime.output_dir
        from fedguard.interrupt import EXIT_CODE, RunInterrupted
        from fedguard.simulation import run_simulation

        try:
            run_simulation(cfg)
        except RunInterrupted as stop:
            print(f"interrupted: rounds 1-{stop.completed} of {cfg.rounds} are recorded and checkpointed in "
                  f"{cfg.run_dir}; continue with: fedguard run resume={cfg.run_dir}", file=sys.stderr)
            raise SystemExit(EXIT_CODE) from None
        summary = Path(cfg.run_dir) / "summary.json"
        import json

        result = json.loads(summary.read_text())
        global _job_started
        wall, rounds_s = time.perf_counter() - _job_started, result["timing"]["total_s"]
        _job_started = time.perf_counter()
        print(f"run dir: {cfg.run_dir}  final accuracy: {result['final_accuracy']:.4f}  "
              f"({result['rounds']} rounds in {rounds_s:.1f}s, start-up {wall - rounds_s:.1f}s, wall {wall:.1f}s)")
        return result["final_accuracy"]

    task()


RUN_RECORDS = ("rounds.jsonl", "summary.json", "checkpoint.pt")  # a directory holding one of these holds a run


def refuse_reused_run_dir(overrides: list[str]) -> None:
    """Exit 2 when `hydra.run.dir=` names a directory that already holds a run (and the run
    does not `resume=` it): Hydra would rewrite its saved config and the run append to its
    records. Checked before Hydra starts, so nothing there is touched."""
    run_dirs = [a.split("=", 1)[1] for a in overrides if a.startswith("hydra.run.dir=")]
    if not run_dirs or any(a.startswith("resume=") and a != "resume=" for a in overrides):
        return
    run_dir = Path(run_dirs[-1])
    held = [name for name in RUN_RECORDS if (run_dir / name).exists()]
    if held:
        print(f"hydra.run.dir={run_dir} already holds a run ({', '.join(held)}); continue it with "
              f"`fedguard run resume={run_dir}`, or choose another hydra.run.dir", file=sys.stderr)
        raise SystemExit(2)


MULTIRUN_FLAGS = ("-m", "--multirun")


def preflight(args: list[str]) -> None:
    """Exit 2 with one line on stderr when the run's config or data would fail (an unknown key,
    an invalid value, a truncated dataset file, the hub offline, `resume=` of no run or with a
    changed value; `fedguard.preflight`), before Hydra creates the run directory and Ray
    starts; warn about knobs their entry does not read. Hydra's own flags (--help, --cfg, ...)
    skip it."""
    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in args):
        return
    from fedguard.config import ConfigError
    from fedguard.preflight import check_run

    try:
        check_run([a for a in args if a not in MULTIRUN_FLAGS], multirun=any(a in MULTIRUN_FLAGS for a in args))
    except ConfigError as err:
        print(" ".join(str(err).split()), file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"fedguard {version('fedguard')}")
        raise SystemExit(0)
    command, rest = argv[0], argv[1:]
    if command == "run":
        refuse_reused_run_dir(rest)
        preflight(rest)
        resume = [a.split("=", 1)[1] for a in rest if a.startswith("resume=")]
        if resume and resume[-1] and not any(a.startswith("hydra.run.dir=") for a in rest):
            # Hydra's output dir of a resumption is the run it continues; no new .hydra/ there
            rest = [*rest, f"hydra.run.dir={resume[-1]}", "hydra.output_subdir=null"]
        sys.argv = [f"{sys.argv[0]} run", *rest]
        _hydra_run()
    elif command == "report":
        from fedguard.report import main as report_main

        report_main(rest)
    elif command == "list":
        from fedguard.listing import main as list_main

        list_main(rest)
    else:
        print(f"fedguard: unknown command {command!r} (commands: run, report, list; see fedguard --help)",
              file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
