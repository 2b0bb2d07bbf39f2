"""Prometheus counters and gauges for /metrics, in the plain text exposition format (no dependency)."""

from __future__ import annotations

import threading

HELP = {
    "requests_total": ("counter", "HTTP requests answered, by endpoint and status"),
    "prompt_tokens_total": ("counter", "Prompt tokens prefilled"),
    "generation_tokens_total": ("counter", "Tokens generated"),
    "request_failures_total": ("counter", "Requests that failed inside the engine"),
    "cancelled_total": ("counter", "Requests dropped because the client went away"),
    "image_cache_hits_total": ("counter", "Images whose features came from the shared cache"),
    "running": ("gauge", "Requests in the running batch"),
    "waiting": ("gauge", "Requests waiting for a slot"),
}


class Metrics:
    """Thread-safe named values, with optional labels, rendered as `llavakit_<name>{labels} value`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple], float] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0)

    def render(self) -> str:
        """The exposition text: HELP and TYPE lines, then one sample per label set."""
        with self._lock:
            values = dict(self._values)
        lines = []
        for name, (kind, text) in HELP.items():
            lines += [f"# HELP llavakit_{name} {text}", f"# TYPE llavakit_{name} {kind}"]
            samples = [(labels, v) for (n, labels), v in sorted(values.items()) if n == name] or [((), 0)]
            for labels, value in samples:
                label_text = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"llavakit_{name}{{{label_text}}} {value:g}" if label_text
                             else f"llavakit_{name} {value:g}")
        return "\n".join(lines) + "\n"
