"""What every benchmark shares: the command line (--quick, --out), measuring in a fresh process so a
figure's peak memory is its own, a description of the machine, and writing `<name>.json` + `<name>.md`.

The machine record carries the load average before and after: on a shared machine a figure taken
under load is not a figure, and the JSON says so instead of hiding it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_OUT = "build/bench"
REPO = Path(__file__).resolve().parents[1]


def parse_args(doc: str, argv: list[str] | None = None, **extra: dict) -> argparse.Namespace:
    """`--quick`: a few hundred images and two or three epochs, to check the script, not the speed."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, figures mean little")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for <name>.json and <name>.md (default {DEFAULT_OUT})")
    for flag, kwargs in extra.items():
        p.add_argument(flag, **kwargs)
    return p.parse_args(argv)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_report(result: dict) -> None:
    """The last stdout line of a measuring child: its result plus its own peak memory."""
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}), flush=True)


def in_fresh_process(module: str, *args: str) -> dict:
    """Run `python -m <module> --measure <args>` and return its `child_report`; its stderr on failure."""
    proc = subprocess.run([sys.executable, "-m", module, "--measure", *map(str, args)], capture_output=True,
                          text=True, env=os.environ)
    if proc.returncode:
        raise RuntimeError(f"{module} --measure {' '.join(map(str, args))} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def imgclf() -> list[str]:
    """The `imgclf` command of this virtualenv (the module where the entry point is not installed)."""
    cli = Path(sys.executable).parent / "imgclf"
    return [str(cli)] if cli.exists() else [sys.executable, "-m", "imgclf.pipelines.cli.main"]


# What the contenders import first: our zygote's list, the notebook scripts' model module and our CLI.
WARM_IMPORTS = ("imgclf.pipelines.local.preloaded_tasks", "benchmarks.notebook_model", "imgclf.pipelines.cli.main")


def warm_imports() -> float:
    """Import what the contenders import, in a throwaway process, and return its seconds. This machine
    drops file pages no process has mapped or touched for about a minute, so otherwise whichever
    contender runs first after a pause alone reads TensorFlow from disk (its first task then took about
    three times as long as a round later); as `warm_page_cache` does for the images."""
    from imgclf.pipelines.local.preloaded_tasks import PRELOAD

    code = f"import importlib\nfor name in {(*PRELOAD, *WARM_IMPORTS)!r}:\n    importlib.import_module(name)"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=os.environ, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"warming the contenders' imports failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def timed_process(argv: list[str], log: Path) -> tuple[float, float, str]:
    """Wall and CPU seconds (the process and every child it waited for) of one whole process, and its
    stdout; raises with the log's tail if it fails."""
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=os.environ)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{text[-4000:]}")
    return wall, usage.ru_utime + usage.ru_stime, text


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        return round(kb / 2**20, 1)
    except (OSError, IndexError, ValueError):
        return None


def machine() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "jax", "jaxlib"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {"cores": os.cpu_count(), "cpu": _cpu_model(), "memory_gib": _mem_gib(), "python": platform.python_version(),
            "packages": versions, "load_average_1m_before": round(os.getloadavg()[0], 2)}


def steady(values: list[float]) -> float:
    """Median of every epoch after the first (the first alone if there is only one)."""
    rest = values[1:] or values
    return statistics.median(rest)


def save(name: str, out: str, payload: dict, md: str, title: str, quick: bool) -> None:
    """Write `<out>/<name>.json` and `.md` and print the table; marks quick-mode and loaded-machine figures."""
    payload["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    payload["quick"] = quick
    cores = payload["machine"]["cores"] or 1
    loaded = max(payload["machine"]["load_average_1m_before"], payload["machine"]["load_average_1m_after"]) > cores
    notes = []
    if quick:
        notes.append("QUICK MODE: tiny sizes, these figures only show the script works")
    if loaded:
        notes.append(f"machine was loaded (1-minute load average above {cores} cores): figures are contaminated")
    payload["notes"] = notes
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=1))
    heading = f"{title} ({payload['machine']['cores']} cores, {payload['machine']['cpu']})"
    text = "\n".join([f"**{heading}**", *(f"> {n}" for n in notes), "", md, ""])
    (folder / f"{name}.md").write_text(text)
    print("\n" + text, flush=True)
