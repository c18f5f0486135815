"""Connecting to Ray (the given cluster address, `RAY_ADDRESS`, or a new local instance) and the Ray Data settings
our jobs share."""

from __future__ import annotations

import os


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = False):
    """Connect to a cluster when an address is given (or RAY_ADDRESS is set), else start a local Ray.

    Safe to call twice: an already initialised Ray (a test fixture, a Ray job's driver) is reused.
    """
    import ray

    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local runs: no token prompt/warning
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(ignore_reinit_error=True, include_dashboard=False, log_to_driver=not quiet)
    if address:
        ray.init(address=address, **kwargs)
    else:  # our own local Ray: its workers start with the framework's unactionable warnings silenced
        ray.init(num_cpus=num_cpus, runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_worker"}, **kwargs)
    return ray


def quiet_worker() -> None:
    """Run in every worker process of a local Ray: silences what a user can do nothing about. Ray Train's detached
    placement-group cleaner warns whenever one state query times out (every busy second on a 2-core machine), and
    DeepSpeed calls a torch collective that torch has deprecated (a FutureWarning on every step)."""
    import logging
    import warnings

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated")


def configure_data_context(progress: bool = True, object_store_limit_mb: int | None = None) -> None:
    """Ray Data settings shared by our jobs: progress bars on for users, off for tests and benchmarks.

    `object_store_limit_mb` caps what the streaming executor keeps in the object store (decoded frames waiting
    for a consumer); by default Ray Data takes a share of the cluster's object store.
    """
    from ray.data import DataContext, ExecutionResources

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.enable_operator_progress_bars = progress
    ctx.verbose_stats_logs = False
    # Per-operator reservation must stay ON: without it Ray Data enforces no memory budget at all (measured: a
    # slow consumer let 47 of 60 2-MB rows pile up under a 20 MB limit; with it on, 6). But the default ratio
    # (0.5) holds back half the CPUs of a 2-CPU node, so decode ran one task at a time; 0.1 does not.
    ctx.op_resource_reservation_enabled = True
    ctx.op_resource_reservation_ratio = 0.1
    if object_store_limit_mb is not None:
        ctx.execution_options.resource_limits = ExecutionResources(
            object_store_memory=int(object_store_limit_mb) * 1024 * 1024
        )


def materialize_in_order(ds):
    """`ds` computed once into the object store (spilling to disk beyond it), in the same order on every run, so
    a restarted worker's skip-by-position stays exact."""
    from ray.data import DataContext

    DataContext.get_current().execution_options.preserve_order = True
    return ds.materialize()
