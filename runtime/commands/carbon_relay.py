"""Relay live grid carbon intensity from a provider's API into an MQTT broker: poll on a
schedule, check each answer as a device would, and publish it retained on
carboncp/carbon/<ZONE> in this project's JSON (with its signal: average/direct,
average/lifecycle or marginal/direct). Errors back off: 429 waits Retry-After, 5xx, timeouts
and unreachable APIs double the wait from --backoff-min to --backoff-max; a refused token
stops the relay with one line (exit 2).

Credentials come from the environment or a file, never the command line:
  electricitymaps  ELECTRICITYMAPS_TOKEN, or --token-file FILE
  watttime         WATTTIME_USERNAME + WATTTIME_PASSWORD (or --username + --password-file),
                   or a ready bearer token in WATTTIME_TOKEN / --token-file
  ukci             none (api.carbonintensity.org.uk is open)

Examples:
  ELECTRICITYMAPS_TOKEN=... carboncp carbon-relay --provider electricitymaps \\
      --provider-zone DE --zone DE-LU --broker mqtt://broker.lan:1883 --interval 900
  carboncp carbon-relay --provider ukci --zone GB --broker mqtt://broker.lan:1883
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "poll a carbon-intensity API (Electricity Maps, UK, WattTime) and publish it over MQTT"

_TOKEN_ENV = {"electricitymaps": "ELECTRICITYMAPS_TOKEN", "watttime": "WATTTIME_TOKEN"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", required=True, help="electricitymaps, ukci or watttime")
    parser.add_argument("--zone", required=True, help="topic zone: carboncp/carbon/<ZONE>")
    parser.add_argument(
        "--provider-zone", help="the provider's zone or region (default: --zone), e.g. DE"
    )
    parser.add_argument("--broker", required=True, metavar="URL", help="mqtt:// or mqtts://")
    parser.add_argument("--api-url", help="the API's base URL (default: the provider's)")
    parser.add_argument("--token-file", metavar="FILE", help="file holding the API token")
    parser.add_argument("--username", help="WattTime login (default: $WATTTIME_USERNAME)")
    parser.add_argument("--password-file", metavar="FILE", help="WattTime password file")
    parser.add_argument(
        "--emission-factor",
        default="direct",
        help="Electricity Maps factors: direct (default, as bundles are built) or lifecycle",
    )
    parser.add_argument(
        "--signal-type", default="co2_moer", help="WattTime: co2_moer (default) or co2_aoer"
    )
    parser.add_argument("--interval", type=float, default=300.0, help="seconds between polls")
    parser.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout, seconds")
    parser.add_argument("--backoff-min", type=float, default=5.0, help="first retry wait, s")
    parser.add_argument("--backoff-max", type=float, default=600.0, help="longest retry wait, s")
    parser.add_argument("--count", type=int, help="stop after this many values (default: never)")
    parser.add_argument("--broker-username")
    parser.add_argument("--broker-password-file", metavar="FILE")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA certificate for mqtts://")
    parser.add_argument("--quiet", action="store_true", help="no line per poll on stderr")


def _read_secret(path: str | None, what: str) -> str | None:
    from carboncp.runtime.errors import ConfigError

    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read ({exc.strerror})") from None
    if not text:
        raise ConfigError(f"{what} {path}: the file is empty")
    return text


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from carboncp.runtime.checks import check_number
    from carboncp.runtime.errors import ConfigError
    from carboncp.runtime.signals.carbon import ZONE_RE
    from carboncp.runtime.signals.mqtt import CarbonPublisher
    from carboncp.runtime.signals.relay import CarbonRelay, ProviderConfig

    check_number(args.interval, "--interval", lo=0, lo_open=True)
    check_number(args.timeout, "--timeout", lo=0, lo_open=True)
    check_number(args.backoff_min, "--backoff-min", lo=0, lo_open=True)
    check_number(args.backoff_max, "--backoff-max", lo=args.backoff_min)
    check_number(args.count, "--count", lo=1, none_ok=True)
    for flag, zone in (("--zone", args.zone), ("--provider-zone", args.provider_zone)):
        if zone is not None and not ZONE_RE.match(zone):
            raise ConfigError(f"{flag} {zone!r} is not a zone id (letters, digits, - _ .)")
    env = os.environ
    token = _read_secret(args.token_file, "--token-file") or env.get(
        _TOKEN_ENV.get(args.provider, ""), None
    )
    cfg = ProviderConfig(
        provider=args.provider,
        zone=args.zone,
        provider_zone=args.provider_zone,
        api_url=args.api_url,
        token=token,
        username=args.username or env.get("WATTTIME_USERNAME"),
        password=_read_secret(args.password_file, "--password-file")
        or env.get("WATTTIME_PASSWORD"),
        emission_factor=args.emission_factor,
        signal_type=args.signal_type,
    )

    def log(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with CarbonPublisher(
        args.broker,
        username=args.broker_username,
        password=_read_secret(args.broker_password_file, "--broker-password-file"),
        tls_ca=args.tls_ca,
    ) as pub:
        relay = CarbonRelay(
            cfg, pub, interval_s=args.interval, timeout_s=args.timeout,
            backoff_min_s=args.backoff_min, backoff_max_s=args.backoff_max, log=log,
        )  # fmt: skip
        try:
            n = relay.run(count=args.count, stop=stop)
        except KeyboardInterrupt:
            n = relay.counts["published"]
    errors = {k: v for k, v in sorted(relay.counts.items()) if k != "published"}
    text = ", ".join(f"{k} {v}" for k, v in errors.items()) or "none"
    print(f"carbon-relay: {n} values published to {args.broker} ({args.zone}); errors: {text}")
    return 0
