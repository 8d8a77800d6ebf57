"""A live carbon relay: poll a grid-data provider's HTTP API on a schedule and publish each
value as a retained message on carboncp/carbon/<zone>, in this project's JSON, so that a
device accepts it (`carboncp carbon-relay`; docs/FAULTS.md, "Carbon relay").

Providers (the requests they document):
- electricitymaps: GET {api}/v3/carbon-intensity/latest?zone=Z&emissionFactorType=direct,
  header `auth-token: TOKEN`. `emissionFactorType` is asked for explicitly (direct by default:
  bundles are calibrated on direct intensities; the API's own default is lifecycle).
- ukci (UK Carbon Intensity, national, no token): GET {api}/intensity.
- watttime (v3): GET {api}/login with HTTP basic auth -> {"token"}; then
  GET {api}/v3/forecast?region=R&signal_type=co2_moer with `Authorization: Bearer TOKEN`
  (a 24 h forecast, 288 points; the current point is taken, the rest kept as the forecast).
  A ready token may be given instead of a login; a 401 logs in again once.

Every answer goes through `parse_carbon_payload` (the same checks as on the device) before it
is published, so the relay never forwards a value a device would refuse for its content; the
signal (average/direct, average/lifecycle, marginal/direct) travels in the payload and the
device decides whether it accepts it.

Errors and backoff (`RelayError.kind`):
- auth (401/403): WattTime logs in again once; otherwise a ConfigError (the token is wrong;
  retrying cannot help);
- rate_limited (429): wait Retry-After (seconds or an HTTP date; capped at `max_retry_after_s`),
  at least the current backoff;
- server (5xx), timeout, unreachable, bad_answer (not JSON, refused by the payload checks),
  client (other 4xx): exponential backoff from `backoff_min_s` doubling to `backoff_max_s`;
  a success resets it and the next poll is `interval_s` after the previous one started.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from carboncp.runtime.errors import ConfigError, SignalError
from carboncp.runtime.signals.carbon import (
    TOPIC_PREFIX,
    CarbonReading,
    PayloadError,
    format_carbon_payload,
    parse_carbon_payload,
)

PROVIDERS = ("electricitymaps", "ukci", "watttime")
DEFAULT_API = {
    "electricitymaps": "https://api.electricitymap.org",
    "ukci": "https://api.carbonintensity.org.uk",
    "watttime": "https://api.watttime.org",
}
MAX_ANSWER_BYTES = 4 << 20  # a week of 5-minute WattTime history is ~0.2 MB
MAX_PUBLISHED_FORECAST = 288  # points kept in the published payload (24 h at 5 min)


class RelayError(SignalError):
    """One failed poll; `kind` names the backoff rule (module docstring)."""

    def __init__(self, kind: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.retry_after_s = kind, retry_after_s


@dataclass
class ProviderConfig:
    provider: str
    zone: str  # the topic's zone (carboncp/carbon/<zone>)
    provider_zone: str | None = None  # the provider's zone / region (default: zone)
    api_url: str | None = None  # default DEFAULT_API[provider]
    token: str | None = None  # Electricity Maps token, or a WattTime bearer token
    username: str | None = None  # WattTime login
    password: str | None = None
    emission_factor: str = "direct"  # Electricity Maps: direct | lifecycle
    signal_type: str = "co2_moer"  # WattTime: co2_moer | co2_aoer

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ConfigError(f"--provider {self.provider!r} is not one of {', '.join(PROVIDERS)}")
        if self.emission_factor not in ("direct", "lifecycle"):
            raise ConfigError(f"--emission-factor {self.emission_factor!r}: direct or lifecycle")
        self.api_url = (self.api_url or DEFAULT_API[self.provider]).rstrip("/")
        if not self.api_url.startswith(("http://", "https://")):
            raise ConfigError(f"--api-url {self.api_url!r} must start with http:// or https://")
        self.provider_zone = self.provider_zone or self.zone
        if self.provider == "electricitymaps" and not self.token:
            raise ConfigError(
                "electricitymaps needs an API token: set ELECTRICITYMAPS_TOKEN or --token-file"
            )
        if self.provider == "watttime" and not self.token and not (self.username and self.password):
            raise ConfigError(
                "watttime needs a login (WATTTIME_USERNAME and WATTTIME_PASSWORD, or "
                "--username and --password-file) or a token (WATTTIME_TOKEN / --token-file)"
            )


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


def http_get(
    url: str, headers: dict[str, str], timeout_s: float, now: Callable[[], float] = time.time
) -> bytes:
    """The body of a 200 answer; any other outcome is a RelayError of the right kind."""
    req = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = resp.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        code = exc.code
        with exc:
            exc.read(65536)  # drain a little so the connection closes cleanly
        if code in (401, 403):
            raise RelayError("auth", f"{code} from {_host(url)}: the token was refused") from None
        if code == 429:
            ra = _retry_after(exc.headers.get("Retry-After"), now())
            raise RelayError("rate_limited", f"429 from {_host(url)}", ra) from None
        if code >= 500:
            raise RelayError("server", f"{code} from {_host(url)}") from None
        raise RelayError("client", f"{code} from {_host(url)} for {_path(url)}") from None
    except TimeoutError as exc:
        raise RelayError("timeout", f"no answer from {_host(url)} in {timeout_s:g} s") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise RelayError("timeout", f"no answer from {_host(url)} in {timeout_s:g} s") from exc
        raise RelayError("unreachable", f"{_host(url)}: {exc.reason}") from exc
    except (OSError, ValueError) as exc:  # reset, bad status line, ...
        raise RelayError("unreachable", f"{_host(url)}: {type(exc).__name__}: {exc}") from exc
    if len(body) > MAX_ANSWER_BYTES:
        raise RelayError("bad_answer", f"answer over {MAX_ANSWER_BYTES} bytes")
    return body


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path


class ProviderClient:
    """Builds a provider's request, logs in (WattTime) and fetches one answer."""

    def __init__(self, cfg: ProviderConfig, timeout_s: float = 10.0) -> None:
        self.cfg, self.timeout_s = cfg, timeout_s
        self._token = cfg.token
        self.logins = 0

    def url(self) -> str:
        c, q = self.cfg, urllib.parse.urlencode
        if c.provider == "electricitymaps":
            query = q({"zone": c.provider_zone, "emissionFactorType": c.emission_factor})
            return f"{c.api_url}/v3/carbon-intensity/latest?{query}"
        if c.provider == "ukci":
            return f"{c.api_url}/intensity"
        query = q({"region": c.provider_zone, "signal_type": c.signal_type})
        return f"{c.api_url}/v3/forecast?{query}"

    def _login(self) -> None:
        c = self.cfg
        if not (c.username and c.password):
            raise ConfigError(f"watttime refused the token ({c.api_url}); give a login")
        basic = base64.b64encode(f"{c.username}:{c.password}".encode()).decode()
        body = http_get(f"{c.api_url}/login", {"Authorization": f"Basic {basic}"}, self.timeout_s)
        try:
            token = json.loads(body)["token"]
            if not isinstance(token, str) or not token:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise RelayError("bad_answer", "the WattTime login answer has no token") from None
        self._token = token
        self.logins += 1

    def fetch(self) -> bytes:
        c = self.cfg
        if c.provider == "electricitymaps":
            return http_get(self.url(), {"auth-token": c.token or ""}, self.timeout_s)
        if c.provider == "ukci":
            return http_get(self.url(), {}, self.timeout_s)
        if self._token is None:
            self._login()
        try:
            return http_get(self.url(), {"Authorization": f"Bearer {self._token}"}, self.timeout_s)
        except RelayError as exc:
            if exc.kind != "auth" or not (c.username and c.password):
                raise
        self._login()  # tokens expire (30 min): log in again once
        return http_get(self.url(), {"Authorization": f"Bearer {self._token}"}, self.timeout_s)


class CarbonRelay:
    """Poll one provider for one zone and publish what it answers (module docstring)."""

    def __init__(
        self,
        cfg: ProviderConfig,
        publisher: Any,
        *,
        interval_s: float = 300.0,
        timeout_s: float = 10.0,
        backoff_min_s: float = 5.0,
        backoff_max_s: float = 600.0,
        max_retry_after_s: float = 3600.0,
        max_age_s: float = 7200.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg, self.publisher = cfg, publisher
        self.client = ProviderClient(cfg, timeout_s)
        self.interval_s, self.backoff_min_s, self.backoff_max_s = (
            interval_s, backoff_min_s, backoff_max_s,
        )  # fmt: skip
        self.max_retry_after_s, self.max_age_s = max_retry_after_s, max_age_s
        self.clock, self.now, self.log = clock, now, log
        self.counts: Counter[str] = Counter()  # "published" and each RelayError kind
        self.failures = 0  # consecutive
        self.last: CarbonReading | None = None

    def poll_once(self) -> CarbonReading:
        """Fetch, check and publish one value; RelayError (or ConfigError for auth)."""
        try:
            body = self.client.fetch()
        except RelayError as exc:
            if exc.kind == "auth":
                raise ConfigError(
                    f"carbon-relay: {self.cfg.provider} refused the credentials ({exc}); "
                    "check the token (or login) and its environment variable or file"
                ) from None
            raise
        c = self.cfg
        try:
            reading = parse_carbon_payload(
                TOPIC_PREFIX + c.zone,
                body,
                self.now(),
                max_age_s=self.max_age_s,
                max_bytes=MAX_ANSWER_BYTES,
                zone_map={c.provider_zone or c.zone: c.zone},
            )
        except PayloadError as exc:
            raise RelayError("bad_answer", f"{c.provider} answer refused ({exc})") from None
        forecast = (reading.forecast or [])[:MAX_PUBLISHED_FORECAST] or None
        self.publisher.publish_raw(
            TOPIC_PREFIX + c.zone,
            format_carbon_payload(
                c.zone, reading.gco2_per_kwh, reading.ts_s, source=f"relay:{reading.source}",
                kind=reading.kind, basis=reading.basis, forecast=forecast,
            ),
        )  # fmt: skip
        self.last = reading
        return reading

    def delay_after(self, exc: RelayError | None) -> float:
        """Seconds to wait before the next poll (the success interval, or the backoff)."""
        if exc is None:
            self.failures = 0
            return self.interval_s
        self.failures += 1
        backoff = min(self.backoff_max_s, self.backoff_min_s * 2 ** (self.failures - 1))
        if exc.kind == "rate_limited" and exc.retry_after_s is not None:
            return max(backoff, min(exc.retry_after_s, self.max_retry_after_s))
        return backoff

    def run(self, count: int | None = None, stop: Any = None) -> int:
        """Poll until `count` values are published (None: forever) or `stop` is set; returns
        the number published. `stop` is a threading.Event (its wait() is the sleep)."""
        import threading

        stop = stop or threading.Event()
        published = 0
        while not stop.is_set() and (count is None or published < count):
            t0 = self.clock()
            err: RelayError | None = None
            try:
                r = self.poll_once()
                published += 1
                self.counts["published"] += 1
                self._say(
                    f"carbon-relay: {self.cfg.zone} {r.gco2_per_kwh:.1f} g/kWh ({r.signal}, "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(r.ts_s))}) published"
                )
            except RelayError as exc:
                err = exc
                self.counts[exc.kind] += 1
            delay = self.delay_after(err)
            if err is not None:
                self._say(f"carbon-relay: {err}; retrying in {delay:.1f} s")
            if count is not None and published >= count:
                break
            wait = delay - (self.clock() - t0) if err is None else delay
            stop.wait(max(0.0, wait))
        return published

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)
