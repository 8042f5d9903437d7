"""Cron expressions for schedules: users write the usual five fields; KFP wants six (seconds first),
Vertex takes five with an optional `TZ=Area/City ` prefix."""
from __future__ import annotations

import re
import zoneinfo

FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
          ("month", 1, 12, {m: i + 1 for i, m in enumerate(
              ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}),
          ("day of week", 0, 7, {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}))
FORM = "'MIN HOUR DAY MONTH WEEKDAY', e.g. '0 3 * * *' (03:00 daily) or '30 2 * * mon' (Mondays 02:30)"


class CronError(ValueError):
    pass


def _value(text: str, lo: int, hi: int, names: dict, name: str) -> int:
    v = names.get(text.lower()) if not text.isdigit() else int(text)
    if v is None or not lo <= v <= hi:
        raise CronError(f"{name} {text!r} is not in {lo}-{hi}")
    return v


def _check_field(text: str, name: str, lo: int, hi: int, names: dict) -> None:
    for part in text.split(","):
        m = re.fullmatch(r"(\*|[^/-]+(?:-[^/-]+)?)(?:/(\d+))?", part)
        if not m:
            raise CronError(f"{name} field {text!r} is malformed")
        body, step = m.groups()
        if step is not None and int(step) == 0:
            raise CronError(f"{name} step must be positive in {text!r}")
        if body != "*":
            ends = [_value(x, lo, hi, names, name) for x in body.split("-")]
            if len(ends) == 2 and ends[0] > ends[1]:
                raise CronError(f"{name} range {body!r} runs backwards")


def parse(expr: str) -> tuple[str, str]:
    """(timezone or '', five-field expression), validated; raises CronError showing the right form."""
    expr = " ".join(expr.split())
    tz = ""
    m = re.fullmatch(r"(?:CRON_)?TZ=(\S+) (.*)", expr)
    if m:
        tz, expr = m.groups()
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise CronError(f"unknown time zone {tz!r} (use an IANA name such as Europe/Berlin)") from None
    fields = expr.split(" ")
    if len(fields) != 5:
        hint = " (KFP's six-field form with seconds first is made for you: give five)" if len(fields) == 6 else ""
        raise CronError(f"cron {expr!r} has {len(fields)} fields; expected 5{hint}: {FORM}")
    for text, (name, lo, hi, names) in zip(fields, FIELDS):
        try:
            _check_field(text, name, lo, hi, names)
        except CronError as e:
            raise CronError(f"cron {expr!r}: {e}; expected {FORM}") from None
    return tz, expr


def for_kfp(expr: str) -> str:
    """Six fields, seconds first. KFP schedules in the cluster's time zone: a TZ= prefix is refused."""
    tz, five = parse(expr)
    if tz:
        raise CronError(f"KFP recurring runs use the cluster's time zone; drop 'TZ={tz}' (Vertex accepts it)")
    return f"0 {five}"


def for_vertex(expr: str) -> str:
    tz, five = parse(expr)
    return f"TZ={tz} {five}" if tz else five
