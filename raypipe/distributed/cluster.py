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
    quiet_logs()  # this process (the driver)
    if address:
        ray.init(address=address, **kwargs)
    else:  # our own local Ray: its workers start with the framework's unactionable messages silenced
        runtime_env = {"worker_process_setup_hook": f"{__name__}.quiet_worker", "env_vars": dict(QUIET_ENV)}
        ray.init(num_cpus=num_cpus, runtime_env=runtime_env, **kwargs)
    return ray


# transformers' per-load bars and advice (weights loading, embedding resizing) in workers: nothing to act on. Our
# own local Ray has no node that can be preempted: no preemption watcher actor in Ray Train (it warns on every run
# that its restart needs its arguments in the object store; on a cluster it stays on).
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # a Serve handle asks a replica its queue length within 0.1 s and warns when a busy small machine is slower
    "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "1.0",
}


def quiet_logs() -> None:
    """Framework loggers at the level where a message asks something of the user. Ray Train's and Ray Data's INFO
    narration (resources requested, worker group started, execution plans), Ray Data's notes that progress bars
    are off (we turn them off) and that no CPU is free (training workers hold them while a dataset feeds them),
    DeepSpeed's scheduler note at step 0, and Ray Train's detached placement-group cleaner (it warns whenever one
    state query times out: every busy second on a 2-core machine). Errors still show. (Ray Train's own narration
    is set by `fit_trainer` through its RunConfig's logging level.)"""
    import logging

    import ray.data  # noqa: F401 - importing it configures the ray.data loggers, so adjust them after

    levels = {
        "ray.train": logging.WARNING,
        "ray.data": logging.WARNING,
        "ray.data._internal.progress": logging.ERROR,
        "ray.data.dataset": logging.ERROR,
        "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
        "DeepSpeed": logging.ERROR,
    }
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    # a worker's error that the driver reports in one line (a full disk) is not also shown as the worker's traceback
    logging.getLogger("ray.train.v2._internal.util").addFilter(_DropFullDisk())
    try:  # Ray Train's report narration ("Reporting training result ...") logs under its file's path
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except ImportError:  # another Ray version: at worst one INFO line per checkpoint
        pass


class _DropFullDisk:
    """A logging filter: drops records about a full disk (`fit_trainer` turns that error into one line)."""

    def filter(self, record) -> bool:
        text = record.getMessage()
        return "No space left on device" not in text and "Disk quota exceeded" not in text


def quiet_worker() -> None:
    """Run in every worker process of a local Ray: `quiet_logs`, and DeepSpeed's calls of torch collectives that
    torch has deprecated (a FutureWarning on every step; ZeRO-3's reduce-scatter too) silenced."""
    import warnings

    quiet_logs()
    for collective in ("all_gather_into_tensor", "reduce_scatter_tensor"):
        warnings.filterwarnings("ignore", message=rf"`torch\.distributed\.{collective}` is deprecated")


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
