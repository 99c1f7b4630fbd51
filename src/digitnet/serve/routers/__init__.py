"""One router per concern: `predict` (the /v1 API), `health` (/healthz, /readyz, /metrics), `page` (/)."""
