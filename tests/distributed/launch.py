"""Run a job on P local processes joined in a gloo process group (CPU), collect each rank's result.

The job is a module-level function ``job(rank, world, *args) -> picklable`` (spawned
processes import it by name); the group is initialised over a file store in a temporary
directory (no port to race for) and destroyed afterwards.
"""

import os
import pickle
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, world, store, out_dir, job, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = job(rank, world, *args)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def run_ranks(job, world: int, *args, timeout: float = 300.0) -> list:
    """``[job(0, world, *args), ..., job(world - 1, world, *args)]`` run on ``world`` processes."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_entry, args=(world, os.path.join(tmp, "store"), tmp, job, args),
                                 nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.terminate()
                raise TimeoutError(f"{job.__name__} on {world} processes ran past {timeout} s")
        results = []
        for rank in range(world):
            with open(os.path.join(tmp, f"{rank}.pkl"), "rb") as f:
                results.append(pickle.load(f))
    return results
