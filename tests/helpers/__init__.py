"""Code the tests share that is not a test: dataset builders (``datasets``, exposed as fixtures
by ``conftest.py``), ports for servers started by tests (``ports``), a multi-node Ray
cluster on loopback (``multinode``), and ``recsearch serve`` in a process (``serve_process``). ``tests/`` is on ``sys.path`` under pytest (rootdir
conftest), so tests import them as ``from helpers.datasets import ...``; the benchmarks in
``bench/`` put ``tests/`` on ``sys.path`` themselves."""
