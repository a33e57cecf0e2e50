"""``recsearch submit``: run a sweep as a Ray Job on a running cluster, through the Jobs API of
the head node's dashboard, from any machine that reaches it (a laptop through
``ray dashboard cluster.yaml``). The same as Ray's own command line::

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 -- \\
        recsearch sweep model=mf search.num_samples=32 out=/mnt/shared/sweeps/mf

(``RAY_AUTH_MODE=token`` only when the cluster uses token authentication, Ray's default for
clusters started by ``ray start`` when a token exists.)

The config is composed and checked here first, so a bad one is never submitted. The job runs on
the head node, with the cluster's own environment: nothing of this machine's (its Python, its
working directory) travels, except what is shipped on purpose:

* by default the job runs the cluster's installed recsearch: ``recsearch`` found on the nodes'
  PATH, or ``PYTHON -m recsearch`` with ``--python``;
* with ``--working-dir DIR`` (a recsearch checkout: the package and ``conf/``), Ray uploads DIR
  and the job and every trial import recsearch and its configs from that copy (Ray's
  ``runtime_env`` ``working_dir``, first on ``PYTHONPATH``): local edits run as edited.

``out`` and ``ray.storage_path`` name folders on the cluster, which a path relative to this
machine's working directory cannot: both must be absolute (or a URI for the storage), on storage
every node shares. The job carries the sweep's name, families and folder as metadata.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
from pathlib import Path

from recsearch.errors import ConfigError, RecsearchError
from recsearch.tuning.plan import plan_sweep
from recsearch.tuning.sweep import job_metadata

TOKEN_FILE = Path("~/.ray/auth_token")  # where `ray get-auth-token --generate` writes the token
# Never uploaded with --working-dir (Ray also skips what .gitignore lists, such as .venv/ and
# runs/): history, and datasets, which the cluster reads from its own RECSEARCH_DATA_DIR.
WORKING_DIR_EXCLUDES = ["/.git", "/data"]  # gitignore patterns: "/" anchors them at the top


class JobFailed(RecsearchError):
    """The submitted sweep job ended in a state other than SUCCEEDED."""


def submit_command(overrides: list[str], address: str | None, python: str | None = None,
                   working_dir: str | None = None, wait: bool = True) -> str:
    """Submit the sweep; with ``wait``, stream its output until it ends. Returns the job id."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    runtime_env = None
    if working_dir:
        checkout = _checkout(working_dir)
        os.environ["RECSEARCH_CONF_DIR"] = str(checkout / "conf")  # checked here as it will run there
        runtime_env = {"working_dir": str(checkout), "excludes": WORKING_DIR_EXCLUDES}
    plan = plan_sweep(overrides)
    check_cluster_paths(overrides, plan.first["ray"]["storage_path"])
    command = [python, "-m", "recsearch"] if python else ["recsearch"]
    entrypoint = shlex.join([*command, "sweep", *overrides])
    # Ray's clients only send the cluster's token when told to; say so explicitly rather
    # than depend on how this shell happens to be set up
    if "RAY_AUTH_MODE" not in os.environ and TOKEN_FILE.expanduser().is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    # readable in the dashboard's job list, unique all the same
    submission_id = f"recsearch-{re.sub(r'[^A-Za-z0-9_.-]', '-', plan.name)}-{secrets.token_hex(3)}"
    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                                   runtime_env=runtime_env, metadata=job_metadata(plan))
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


def check_cluster_paths(overrides: list[str], storage_path: str | None) -> None:
    """``out`` given and absolute, ``ray.storage_path`` absolute or a URI: one line otherwise."""
    given = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in overrides if "=" in o}
    out = given.get("out")
    where = "a path on storage every node of the cluster shares"
    if out is None:
        raise ConfigError(f"recsearch submit needs out=: {where}, e.g. out=/mnt/shared/sweeps/NAME")
    if not out.startswith("/"):
        raise ConfigError(f"out={out} is relative to this machine's working directory, which the cluster does "
                          f"not have: give {where}, e.g. out=/mnt/shared/sweeps/{Path(out).name}")
    if storage_path is not None and "://" not in str(storage_path) and not str(storage_path).startswith("/"):
        raise ConfigError(f"ray.storage_path={storage_path} is relative to this machine's working directory: give "
                          f"{where} (e.g. /mnt/shared/tune) or a URI (s3://bucket/prefix), or leave it unset "
                          "for <out>/tune")


def _checkout(directory: str) -> Path:
    path = Path(directory).expanduser().resolve()
    if not ((path / "recsearch" / "__init__.py").is_file() and (path / "conf" / "config.yaml").is_file()):
        raise ConfigError(f"--working-dir {directory}: not a recsearch checkout (it needs recsearch/ and conf/)")
    return path


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)
