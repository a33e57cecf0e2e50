"""``recsearch submit``: run a sweep as a Ray Job on a running cluster, through the Jobs API
of the head node's dashboard. The same as Ray's own command line::

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 -- \\
        python -m recsearch sweep model=mf search.num_samples=32 out=/shared/sweeps/mf

(``RAY_AUTH_MODE=token`` only when the cluster uses token authentication, Ray's default for
clusters started by ``ray start`` when a token exists.)

The config is composed and checked here first, so a bad one is never submitted. The job runs
``recsearch sweep`` on the head node with the same overrides and ``out`` made absolute: ``out``
and ``ray.storage_path`` must be paths the cluster can write (shared storage across machines),
and recsearch must be installed on every node.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path

from recsearch.errors import RecsearchError
from recsearch.tuning.plan import plan_sweep

TOKEN_FILE = Path("~/.ray/auth_token")  # where `ray get-auth-token --generate` writes the token


class JobFailed(RecsearchError):
    """The submitted sweep job ended in a state other than SUCCEEDED."""


def submit_command(overrides: list[str], address: str | None, python: str, wait: bool) -> str:
    """Submit the sweep; with ``wait``, stream its output until it ends. Returns the job id."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    plan = plan_sweep(overrides)
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "out"]
    entrypoint = shlex.join([python, "-m", "recsearch", "sweep", *kept, f"out={plan.out}"])
    # Ray's clients only send the cluster's token when told to; say so explicitly rather
    # than depend on how this shell happens to be set up
    if "RAY_AUTH_MODE" not in os.environ and TOKEN_FILE.expanduser().is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=entrypoint, metadata={"recsearch_sweep": plan.name})
    except (ConnectionError, RuntimeError) as err:
        raise RecsearchError(f"cannot submit to the Ray cluster at {address}: {err}") from None
    print(f"submitted job {job_id} to {address}:\n  {entrypoint}\n"
          f"follow it with: ray job logs --follow --address {address} {job_id}", flush=True)
    if wait:
        asyncio.run(_follow(client, job_id))
        status = client.get_job_status(job_id)
        if status != JobStatus.SUCCEEDED:
            raise JobFailed(f"job {job_id} ended {status}: {client.get_job_info(job_id).message}")
        print(f"job {job_id} succeeded; results in {plan.out}")
    return job_id


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)
