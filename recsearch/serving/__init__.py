"""Serving trained models over HTTP with Ray Serve: ``app`` (the deployment), ``service`` (the
request logic, no Ray), ``fallback`` (item similarity, popularity), ``cli`` (``recsearch serve``),
``ingress`` (HAProxy or Serve's proxy), ``export`` (``recsearch export``: compressed bundles).

The limits below live here, free of heavy imports, because the command line needs them too."""

MAX_K = 1000  # largest top-k a request may ask for
MAX_HISTORY = 1000  # longest list of recent items a request may send
DEFAULT_MAX_BATCH_SIZE = 32  # requests sharing one forward pass (1 disables batching)
DEFAULT_BATCH_WAIT_S = 0.005  # how long the first request of a batch waits for company
TOKEN_ENV = "RECSEARCH_SERVE_TOKEN"  # when set for the replicas, every endpoint but /health needs it
