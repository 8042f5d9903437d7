"""Kubernetes quantities are parsed once (components/lib/quantity.py): the deploy step's serving
resources and the pipelines' per-task --cpu/--memory accept and refuse exactly the same texts, and what
the pipelines hand to the KFP compiler is a spelling it takes."""
from __future__ import annotations

import itertools
import random
from decimal import Decimal
from fractions import Fraction

import pytest

from imgclf.components.deploy.options import DeployOptions
from imgclf.components.lib import quantity
from imgclf.components.lib.options import ParameterError
from imgclf.pipelines.definitions.platform import resources_with

pytestmark = pytest.mark.unit

NUMBERS = ["0", "1", "2", "16", "250", "1000", "1.5", "0.25", ".5", "2.", "0.001", "0.0005", "3.14159", "007"]
SUFFIXES = ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "P", "E", "e3", "E-3",
            "e0", "e+2"]
FACTOR = {"": 1, "m": Fraction(1, 1000), "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12,
          "P": 10 ** 15, "E": 10 ** 18, "n": Fraction(1, 10 ** 9), "u": Fraction(1, 10 ** 6),
          "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60,
          "e3": 1000, "E-3": Fraction(1, 1000), "e0": 1, "e+2": 100}
VALID = [n + s for n, s in itertools.product(NUMBERS, SUFFIXES)]
# Not quantities: wrong case or unknown units, signs, spaces, several points, bare units, huge exponents.
INVALID = ["", " ", "Gi", "m", "1K", "1KB", "1gi", "1GI", "1mi", "1 Gi", " 1", "1 ", "-1", "-500m", "1.5.5",
           "1..5", "..5", "1,5", "0x10", "1e", "1e+", "1e100", "1ee3", "1Gi2", "1iG", "one", "1_000", "½",
           "1m1", "Infinity", "NaN", "1Gib", "1.Gi.", "+", "+.", "."]


def expected(text: str) -> Fraction:
    """The value computed independently: the number read as a Decimal times the unit's factor."""
    for suffix in sorted(FACTOR, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            return Fraction(Decimal(text[: -len(suffix)])) * FACTOR[suffix]
    return Fraction(Decimal(text))


def random_invalid(n: int) -> list[str]:
    rng = random.Random(7)
    alphabet = "0123456789.mkKMGTPEiIe+- xb"
    found = []
    while len(found) < n:
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
        try:
            expected(text)   # the independent reading
        except (ArithmeticError, ValueError):  # not a number Decimal reads, with a known unit: invalid
            found.append(text)
    return found


@pytest.mark.parametrize("text", VALID)
def test_valid_quantities_have_their_kubernetes_value(text):
    assert quantity.parse(text) == expected(text)


@pytest.mark.parametrize("text", INVALID + random_invalid(60))
def test_invalid_quantities_are_refused_by_both_callers(text):
    with pytest.raises(ValueError):
        quantity.parse(text)
    assert quantity.cpu_problem(text) and quantity.memory_problem(text)
    for what, name in (("cpu", "serving_cpu"), ("memory", "serving_memory")):
        with pytest.raises(ParameterError):
            DeployOptions(**{name: text})
        with pytest.raises(ValueError):
            resources_with([("train", what, text)])


def _accepts(fn, *args, **kwargs) -> bool:
    try:
        fn(*args, **kwargs)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("text", VALID)
def test_deploy_options_and_task_resources_agree(text):
    """Same text, same verdict: serving resources (deploy) and task resources (compile) use one rule.
    CPU must be whole millicores, memory whole bytes (1.5Gi is; 500m, half a byte, is not)."""
    value = expected(text)
    for what, name, whole in (("cpu", "serving_cpu", (value * 1000).denominator == 1),
                              ("memory", "serving_memory", value.denominator == 1)):
        deploy_ok = _accepts(DeployOptions, **{name: text})
        tasks_ok = _accepts(resources_with, [("train", what, f"{text}:{text}")])
        assert deploy_ok == tasks_ok == whole, (what, text, deploy_ok, tasks_ok)


def test_fractional_binary_memory_is_accepted_as_kubernetes_does():
    assert quantity.memory_bytes("1.5Gi") == 1536 * 2 ** 20
    assert resources_with([("train", "memory", "1.5Gi:2Gi")])["train"].memory_request == "1536Mi"
    assert DeployOptions(serving_memory="1.5Gi").serving_memory == "1.5Gi"


@pytest.mark.parametrize("text", VALID)
def test_canonical_spelling_keeps_the_value_and_is_what_the_kfp_compiler_takes(text):
    from kfp.dsl.pipeline_task import PipelineTask

    value = expected(text)
    if (value * 1000).denominator == 1:
        cpu = quantity.cpu_text(text)
        assert quantity.cpu_cores(cpu) == value
        assert PipelineTask._validate_cpu_request_limit(None, cpu) == cpu
    if value.denominator == 1:
        memory = quantity.memory_text(text)
        assert quantity.memory_bytes(memory) == value
        assert PipelineTask._validate_memory_request_limit(None, memory) == memory


def test_request_above_limit_is_refused_whatever_the_spelling():
    with pytest.raises(ValueError, match="above its limit"):
        resources_with([("train", "memory", "1.5Gi:1536M")])   # 1610612736 > 1536000000 bytes
    with pytest.raises(ValueError, match="above its limit"):
        resources_with([("train", "cpu", "1.5:1400m")])
    assert resources_with([("train", "cpu", "0.5:500m")])["train"].cpu_limit == "500m"
