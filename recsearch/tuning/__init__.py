"""Hyperparameter sweeps on Ray Tune: YAML search spaces (``space``), the sweep's checked plan
(``plan``), the per-trial training loop (``trainable``), the Tuner runs with the winner's test
evaluation and export (``sweep``), reading results back (``results``), the leaderboard and
HTML report (``report``) and Ray Jobs submission (``submit``)."""
