"""A local HTTP server (127.0.0.1, a free port) that answers like the carbon-intensity APIs
do, with documented payloads and scripted error answers, for `carboncp carbon-relay` tests.

    api = FakeCarbonApi().start()
    api.script("/v3/carbon-intensity/latest", [api.status(429, {"Retry-After": "1"}),
                                               api.em_latest("DE", 302)])
    ... api.url ... api.requests ... api.stop()

Each path answers from its script in order and repeats the last entry. An entry is
(status, headers, body-or-callable) or ("sleep", seconds, entry) (a timeout).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def iso(t: float, fmt: str | None = None) -> str:
    dt = datetime.fromtimestamp(t, tz=timezone.utc)
    return dt.strftime(fmt) if fmt else dt.isoformat()


class FakeCarbonApi:
    EM_TOKEN = "em-secret"
    WT_USER, WT_PASSWORD, WT_TOKEN = "relay", "wt-pass", "wt-token-1"

    def __init__(self) -> None:
        self.scripts: dict[str, list[Any]] = {}
        self.requests: list[tuple[float, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api._answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeCarbonApi:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, path: str, entries: list[Any]) -> None:
        with self.lock:
            self.scripts[path] = list(entries)

    def paths(self, path: str) -> list[float]:
        """Monotonic times of the requests to `path`."""
        return [t for t, p, _ in self.requests if p.split("?")[0] == path]

    # -- answers ---------------------------------------------------------------------------
    @staticmethod
    def status(code: int, headers: dict[str, str] | None = None, body: bytes = b"{}") -> tuple:
        return (code, headers or {}, body)

    @staticmethod
    def ok(doc_fn: Any) -> tuple:
        return (200, {"Content-Type": "application/json"}, lambda: json.dumps(doc_fn()).encode())

    def em_latest(self, zone: str, value: Any, factor: str | None = "direct", age_s=900.0):
        def doc() -> dict:
            now = time.time()
            d = {"zone": zone, "carbonIntensity": value, "datetime": iso(now - age_s, "%Y-%m-%dT%H:%M:%S.000Z"),
                 "updatedAt": iso(now - 60, "%Y-%m-%dT%H:%M:%S.000Z"),
                 "createdAt": iso(now - age_s, "%Y-%m-%dT%H:%M:%S.000Z"),
                 "isEstimated": True, "estimationMethod": "TIME_SLICER_AVERAGE"}  # fmt: skip
            if factor is not None:
                d["emissionFactorType"] = factor
            return d

        return self.ok(doc)

    def uk_intensity(self, actual: Any, forecast: Any = 180):
        def doc() -> dict:
            start = time.time() - 600
            return {"data": [{"from": iso(start, "%Y-%m-%dT%H:%MZ"),
                              "to": iso(start + 1800, "%Y-%m-%dT%H:%MZ"),
                              "intensity": {"forecast": forecast, "actual": actual,
                                            "index": "moderate"}}]}  # fmt: skip

        return self.ok(doc)

    def wt_forecast(self, value0: float = 800.0, n: int = 288):
        def doc() -> dict:
            t0 = time.time() - 100
            return {
                "data": [{"point_time": iso(t0 + 300 * i), "value": value0 + i} for i in range(n)],
                "meta": {"data_point_period_seconds": 300, "region": "CAISO_NORTH",
                         "warnings": [], "signal_type": "co2_moer",
                         "model": {"date": "2023-03-01", "type": "binned_regression"},
                         "units": "lbs_co2_per_mwh", "generated_at_period_seconds": 300,
                         "generated_at": iso(t0)},
            }  # fmt: skip

        return self.ok(doc)

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        with self.lock:
            self.requests.append((time.monotonic(), h.path, dict(h.headers)))
            script = self.scripts.get(path)
            entry = None if not script else (script.pop(0) if len(script) > 1 else script[0])
        if entry is None:
            entry = self.status(404)
        if entry[0] == "sleep":
            time.sleep(entry[1])
            entry = entry[2]
        code, headers, body = entry
        if code == 200 and not self._authorised(path, h.headers):
            code, headers, body = 401, {}, b'{"message": "unauthorized"}'
        data = body() if callable(body) else body
        try:
            h.send_response(code)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:  # the client gave up (a timeout test)
            pass

    def _authorised(self, path: str, headers: Any) -> bool:
        if path.startswith("/v3/carbon-intensity"):
            return headers.get("auth-token") == self.EM_TOKEN
        if path == "/login":
            basic = base64.b64encode(f"{self.WT_USER}:{self.WT_PASSWORD}".encode()).decode()
            return headers.get("Authorization") == f"Basic {basic}"
        if path.startswith("/v3/"):
            return headers.get("Authorization") == f"Bearer {self.WT_TOKEN}"
        return True
