"""Where a piece of work runs: device and thread count from what Ray assigned."""

from __future__ import annotations

import os

import torch


def ray_node_id() -> str:
    """Id of the Ray node this code runs on ('local' outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        pass
    return "local"


def assigned_device() -> torch.device:
    """CUDA when Ray gave this actor a GPU (Ray sets CUDA_VISIBLE_DEVICES), else CPU."""
    try:
        import ray

        if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
            return torch.device("cuda")
    except Exception:  # noqa: BLE001
        pass
    return torch.device("cpu")


def set_threads(num_cpus: float) -> int:
    """Pin torch's intra-op threads to this actor's CPU share (at least one)."""
    threads = max(1, int(num_cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def ray_resources() -> dict | None:
    """What the Ray instance this process is attached to offers: nodes alive, CPUs, GPUs
    (None outside Ray). Recorded in summary.json `ray`, e.g. to check that concurrent jobs
    each got the cap `backend.init_args` set instead of the whole machine."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        total = ray.cluster_resources()
        return {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                "num_cpus": float(total.get("CPU", 0.0)), "num_gpus": float(total.get("GPU", 0.0))}
    except Exception:  # noqa: BLE001 - Ray not importable or not reachable
        return None
