"""One Ray instance and one pool of client actors per process, shared by the runs it launches.

A Hydra multirun (`fedguard run -m ...`) runs its jobs one after another in one process.
Flower's Ray backend starts Ray when it is not running, builds a pool of `ClientAppActor`s
sized to the cluster, and at the end of the run terminates the actors and shuts Ray down; so
every job of a sweep paid Ray's start (~5 s here), the actors' start (a fresh Python process
each, importing torch, flwr and fedguard: ~9 s on 2 cores) and the shutdown (~1.5 s).

`SharedRayBackend` is Flower's `RayBackend` with the two ends moved out of the run: Ray is
started by `RaySession.ensure` (once per process and set of `ray.init` arguments, shut down
at exit), and the actor pool is taken from and handed back to the session, so the next job
with the same client resources finds its actors warm. Flower's pool is stateless (a
message carries its node's `Context` to whichever idle actor takes it, and back), and the
ClientApp's per-process caches (data splits, partitions, model skeleton, config) are keyed
by what they depend on, so a job's records are the same whether its actors are fresh or
served a previous job (tests/test_sweeps.py compares them).

A pool is discarded (its actors terminated) rather than reused when its run did not give
every actor back (a run that failed mid-round), when the cluster's nodes changed, or when an
actor does not answer (it died between the runs).

`flower_uses` puts the backend in place for a run, and shortens the engine threads' queue
polls so a run ends when its ServerApp ends (not up to a second later). Without a session (Ray already running when fedguard started, e.g. a job inside a Ray task
or a test harness), Ray is used as it is and never shut down by fedguard.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading


def _alive_nodes() -> frozenset:
    import ray

    return frozenset(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


class RaySession:
    """The Ray instance this process started (`init_args`), and its idle actor pools."""

    def __init__(self) -> None:
        self.init_key: tuple | None = None  # the ray.init arguments of the instance we started
        self.pools: dict[tuple, tuple[object, frozenset]] = {}  # resources key -> (pool, nodes then)
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ Ray itself
    def ensure(self, init_args: dict) -> bool:
        """Ray running with `init_args`: reused when this session started it with the same
        arguments, restarted when they differ, left alone when someone else started it.
        Returns whether this call started Ray."""
        import ray

        key = tuple(sorted((k, repr(v)) for k, v in init_args.items()))
        with self.lock:
            if ray.is_initialized():
                if self.init_key is None or self.init_key == key:
                    return False  # ours with these arguments, or not ours to restart
                self._shutdown()
            args = dict(init_args)
            args.setdefault("include_dashboard", False)
            # as Flower's RayBackend.init_ray: workers see this driver's sys.path. A local
            # instance's workers inherit it from this process's environment; a runtime_env
            # would keep them from using the workers Ray prestarts (~1 s more per actor start)
            pythonpath = os.pathsep.join(sys.path)
            if os.environ.get("PYTHONPATH"):
                pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
            os.environ["PYTHONPATH"] = pythonpath
            if args.get("address") != "local":
                args["runtime_env"] = {"env_vars": {"PYTHONPATH": pythonpath}}
            ray.init(**args)
            self.init_key = key
            return True

    def _shutdown(self) -> None:
        import ray

        for pool, _ in self.pools.values():
            _terminate(pool)
        self.pools.clear()
        if self.init_key is not None and ray.is_initialized():
            ray.shutdown()
        self.init_key = None

    def shutdown(self) -> None:
        with self.lock:
            self._shutdown()

    # ------------------------------------------------------------------ actor pools
    def take_pool(self, key: tuple, create):
        """An idle pool for `key` (client resources, pool size): the one a previous run gave
        back when the cluster's nodes are the same, else `create()`. Idle pools of other keys
        are terminated (a job of a sweep with other client resources frees their CPUs)."""
        with self.lock:
            kept = self.pools.pop(key, None)
            others, self.pools = list(self.pools.values()), {}
        for pool, _ in others:  # idle actors of other resources would hold the CPUs this pool needs
            _terminate(pool)
        if kept is not None:
            pool, nodes = kept
            if nodes == _alive_nodes() and _responsive(pool):
                return pool
            _terminate(pool)
        return create()

    def give_back(self, key: tuple, pool) -> None:
        """Keep `pool` for the next run, if every actor is idle again; else terminate it."""
        if pool is None:
            return
        if len(pool.pool) != pool.num_actors or pool._future_to_actor:  # noqa: SLF001 - Flower's pool
            _terminate(pool)
            return
        with self.lock:
            old = self.pools.pop(key, None)
            self.pools[key] = (pool, _alive_nodes())
        if old is not None:
            _terminate(old[0])

    def discard_pools(self) -> None:
        """Terminate every idle pool (after a failed run: its actors may be unhealthy)."""
        with self.lock:
            pools, self.pools = list(self.pools.values()), {}
        for pool, _ in pools:
            _terminate(pool)


def _responsive(pool, timeout: float = 30.0) -> bool:
    """Every actor of an idle pool answers (none died since its run, e.g. killed for memory)."""
    import ray

    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool.pool], timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - a dead actor, or none answering in time
        return False


def _terminate(pool) -> None:
    import ray

    if not ray.is_initialized():  # a call on an actor would start a new Ray instance
        return
    with contextlib.suppress(Exception):
        pool.terminate_all_actors()


SESSION = RaySession()
atexit.register(SESSION.shutdown)
JOB_ACTORS: int | None = None  # set by the ray_jobs launcher: the job's actors (its placement group)


def shared_ray_backend(pool_size: int | None = None):
    """Flower's RayBackend class, subclassed so that Ray and the actors outlive the run (see
    the module's docstring). `pool_size`: at most that many actors (None: as many as fit)."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

    class SharedRayBackend(RayBackend):
        def init_ray(self, backend_config) -> None:  # started by RaySession.ensure
            import ray

            if not ray.is_initialized():
                super().init_ray(backend_config)

        def _pool_key(self) -> tuple:
            return (tuple(sorted(self.client_resources.items())), pool_size)

        def build(self, app_fn) -> None:
            def create():
                pool = BasicActorPool(actor_type=ClientAppActor, client_resources=self.client_resources,
                                      actor_kwargs=self.actor_kwargs)
                size = pool.actors_capacity if pool_size is None else min(pool_size, pool.actors_capacity)
                pool.add_actors_to_pool(max(1, size))
                return pool

            self.pool = SESSION.take_pool(self._pool_key(), create)
            self.app_fn = app_fn

        def terminate(self) -> None:  # the actors and Ray stay for the next run
            SESSION.give_back(self._pool_key(), self.pool)
            self.pool = None

    return SharedRayBackend


class _PromptQueue:
    """A queue whose `get` waits at most `POLL_S` at a time: Flower's engine threads loop on
    `queue.get(timeout=1.0)` until the run's stop event is set, so each run ended up to a
    second after its ServerApp. Waiting less lets them see the event at once."""
    POLL_S = 0.05

    def __init__(self, queue) -> None:
        self._queue = queue

    def get(self, block: bool = True, timeout: float | None = None):
        return self._queue.get(block, self.POLL_S if timeout is None else min(timeout, self.POLL_S))

    def __getattr__(self, name):
        return getattr(self._queue, name)


@contextlib.contextmanager
def flower_uses(backend_cls):
    """Within the block, Flower's simulation engine builds `backend_cls` where it would build
    its `RayBackend` (the engine imports the class from its module when a run starts), and its
    worker and reply threads poll their queues briefly (`_PromptQueue`)."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend

    original = raybackend.RayBackend, vce_api.worker, vce_api.put_message_into_state
    worker, put_into_state = original[1], original[2]
    raybackend.RayBackend = backend_cls
    vce_api.worker = lambda ins, res, *args: worker(_PromptQueue(ins), res, *args)
    vce_api.put_message_into_state = lambda state, queue, f_stop: put_into_state(state, _PromptQueue(queue), f_stop)
    try:
        yield
    finally:
        raybackend.RayBackend, vce_api.worker, vce_api.put_message_into_state = original
