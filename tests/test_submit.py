"""``recsearch submit`` up to the Jobs API, with Ray's client replaced by a recorder: what the job
is asked to run, and the paths refused before anything is sent. tests/test_multinode.py submits
to a real cluster from another environment."""

from __future__ import annotations

import pytest

from recsearch.cli import main
from recsearch.tuning import submit

SMALL = ["model=mf", "search.num_samples=1"]


class Recorder:
    """Stands for ray.job_submission.JobSubmissionClient: keeps what submit_job was given."""

    submitted: list[dict] = []

    def __init__(self, address: str):
        self.address = address

    def submit_job(self, **job) -> str:
        Recorder.submitted.append(job)
        return job["submission_id"]


@pytest.fixture
def jobs(monkeypatch):
    import ray.job_submission

    Recorder.submitted = []
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Recorder)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    return Recorder.submitted


def test_the_job_runs_the_clusters_recsearch_with_the_overrides_as_given(jobs):
    assert main(["submit", "--no-wait", *SMALL, "out=/mnt/shared/sweeps/mf", "ray.storage_path=s3://bucket/tune"]) == 0
    (job,) = jobs
    assert job["entrypoint"] == "recsearch sweep model=mf search.num_samples=1 out=/mnt/shared/sweeps/mf " \
                               "ray.storage_path=s3://bucket/tune"
    assert job["metadata"] == {"recsearch_sweep": "mf", "recsearch_families": "mf", "recsearch_out": "/mnt/shared/sweeps/mf"}
    assert job["submission_id"].startswith("recsearch-mf-") and job["runtime_env"] is None


def test_python_and_working_dir(jobs, monkeypatch):
    checkout = submit.Path(submit.__file__).resolve().parents[2]
    monkeypatch.setenv("RECSEARCH_CONF_DIR", str(checkout / "conf"))  # what submit sets: undone after the test
    assert main(["submit", "--no-wait", "--python", "/opt/venv/bin/python", "--working-dir", str(checkout),
                 *SMALL, "out=/mnt/shared/sweeps/mf"]) == 0
    (job,) = jobs
    assert job["entrypoint"].startswith("/opt/venv/bin/python -m recsearch sweep model=mf")
    assert job["runtime_env"] == {"working_dir": str(checkout), "excludes": submit.WORKING_DIR_EXCLUDES}


@pytest.mark.parametrize("overrides, refusal", [
    (["out=runs/mf"], "out=runs/mf is relative to this machine's working directory"),
    ([], "recsearch submit needs out="),
    (["out=/mnt/shared/sweeps/mf", "ray.storage_path=tune"], "ray.storage_path=tune is relative"),
], ids=["relative-out", "no-out", "relative-storage"])
def test_paths_the_cluster_cannot_share_are_refused_in_one_line(jobs, capsys, overrides, refusal):
    assert main(["submit", "--no-wait", *SMALL, *overrides]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and refusal in error and not jobs


def test_a_working_dir_that_is_no_checkout_is_refused(jobs, tmp_path, capsys):
    assert main(["submit", "--no-wait", "--working-dir", str(tmp_path), *SMALL, "out=/mnt/shared/x"]) == 2
    assert "not a recsearch checkout" in capsys.readouterr().err and not jobs
