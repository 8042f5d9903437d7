"""Kubernetes resource quantities (CPU and memory), parsed in one place.

Both the deploy step's serving resources (a KServe InferenceService) and the pipelines' per-task
resources (`--cpu`, `--memory`) are Kubernetes quantities; two parsers once disagreed (`1.5Gi` passed
one and not the other). The grammar is Kubernetes' own (apimachinery's resource.Quantity): a decimal
number (`2`, `1.5`, `.5`, `2.`) with an optional leading `+`, then a binary suffix (Ki Mi Gi Ti Pi Ei),
a decimal one (n u m "" k M G T P E) or a decimal exponent (`1e3`, `5E-1`).

Two rules of our own, both about what a resource can really mean:
- CPU is a whole number of millicores: Kubernetes silently rounds `1.5m` up to `2m`, so a finer value
  is refused rather than changed behind the user's back.
- Memory is a whole number of bytes: `1.5Gi` (1610612736 bytes) is fine, `0.1Ki` (102.4 bytes) and
  `500m` (half a byte, almost always a typo for `500M`/`500Mi`) are refused.
Negative values cannot be written (no `-` sign): a resource is never negative.

`cpu_text`/`memory_text` give the canonical spelling, which is also the one the KFP compiler accepts
(it takes memory only as whole numbers with K-style suffixes, and CPU only as plain or milli forms).
"""
from __future__ import annotations

import re
from fractions import Fraction

BINARY = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
DECIMAL = {"n": Fraction(1, 10 ** 9), "u": Fraction(1, 10 ** 6), "m": Fraction(1, 1000), "": Fraction(1),
           "k": Fraction(10 ** 3), "M": Fraction(10 ** 6), "G": Fraction(10 ** 9), "T": Fraction(10 ** 12),
           "P": Fraction(10 ** 15), "E": Fraction(10 ** 18)}
# The exponent alternative comes first: "1E3" is 1000, "1E" is one exa.
_GRAMMAR = re.compile(r"\+?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                      r"(?:[eE](?P<exponent>[+-]?[0-9]{1,2})|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)")
EXAMPLES = "e.g. 500m, 1, 1.5, 2Gi, 1.5Gi, 512M"


def parse(text: str) -> Fraction:
    """The exact value of a Kubernetes quantity; ValueError if `text` is not one."""
    m = _GRAMMAR.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a Kubernetes quantity ({EXAMPLES})")
    value = Fraction(m["number"] if not m["number"].endswith(".") else m["number"][:-1])
    if m["exponent"] is not None:
        return value * Fraction(10) ** int(m["exponent"])
    suffix = m["suffix"] or ""
    return value * (BINARY[suffix] if suffix in BINARY else DECIMAL[suffix])


def _parse(what: str, text: str, hint: str) -> Fraction:
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a Kubernetes quantity: {hint}") from None


def cpu_cores(text: str) -> Fraction:
    """Cores in a CPU quantity, a whole number of millicores (2, 1.5, 500m, 0.25)."""
    cores = _parse("cpu", text, "give cores (2, 1.5) or millicores (500m)")
    if (cores * 1000).denominator != 1:
        raise ValueError(f"cpu {text!r} is finer than a millicore, which Kubernetes would round up; "
                         f"give cores (2, 1.5) or millicores (500m)")
    return cores


def memory_bytes(text: str) -> int:
    """Bytes in a memory quantity, a whole number of bytes (512Mi, 1.5Gi, 2G)."""
    size = _parse("memory", text, "give a whole number of bytes with an optional unit (512Mi, 1.5Gi, 2G)")
    if size.denominator != 1:
        raise ValueError(f"memory {text!r} is not a whole number of bytes ({float(size):g}); "
                         f"did you mean M or Mi rather than m?")
    return int(size)


def cpu_problem(text: str) -> str:
    """Why `text` is not a CPU quantity ("" if it is): the deploy options' check."""
    try:
        cpu_cores(text)
    except ValueError as e:
        return str(e)
    return ""


def memory_problem(text: str) -> str:
    """Why `text` is not a memory quantity ("" if it is): the deploy options' check."""
    try:
        memory_bytes(text)
    except ValueError as e:
        return str(e)
    return ""


def cpu_text(text: str) -> str:
    """The canonical spelling of a CPU quantity: whole cores as a number, anything else in millicores."""
    cores = cpu_cores(text)
    return str(cores.numerator) if cores.denominator == 1 else f"{int(cores * 1000)}m"


def memory_text(text: str) -> str:
    """The canonical spelling of a memory quantity: the shortest exact whole-number form (1.5Gi is 1536Mi,
    2G stays 2G, 16Gi stays 16Gi). Never `k`: the KFP compiler only knows an upper-case K, which
    Kubernetes does not, so kilobytes are written out in bytes."""
    size = memory_bytes(text)
    forms = [str(size)] + [f"{size // unit}{name}" for name, unit in
                           [*BINARY.items(), *((k, int(v)) for k, v in DECIMAL.items() if v > 1000)]
                           if size and size % unit == 0]
    return min(forms, key=len)
