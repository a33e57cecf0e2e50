"""Serving trained models over HTTP with Ray Serve: ``app`` (the deployment), ``service`` (the
request logic, no Ray), ``fallback`` (item similarity, popularity), ``cli`` (``recsearch serve``),
``ingress`` (HAProxy or Serve's proxy), ``export`` (``recsearch export``: compressed bundles),
``events`` (users' recent events, ``POST /events``).

The limits below live here, free of heavy imports, because the command line needs them too."""

MAX_K = 1000  # largest top-k a request may ask for
MAX_HISTORY = 1000  # longest list of recent items a request may send
DEFAULT_MAX_BATCH_SIZE = 32  # requests sharing one forward pass (1 disables batching)
DEFAULT_BATCH_WAIT_S = 0.005  # how long the first request of a batch waits for company
MAX_EVENTS_PER_REQUEST = 100  # items one POST /events may append
MAX_CLOCK_SKEW_S = 300.0  # how far in the future an event's timestamp may lie (clients' clocks differ)
DEFAULT_MAX_EVENT_USERS = 10_000  # users whose recent events are held (least recently active forgotten)
DEFAULT_MAX_EVENTS_PER_USER = 100  # newest events held per user
TOKEN_ENV = "RECSEARCH_SERVE_TOKEN"  # when set for the replicas, every endpoint but /health needs it
