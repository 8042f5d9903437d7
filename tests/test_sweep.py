"""Sweeps: the file checked before any work, the compiled ParallelFor for both targets, trials that keep
their failures, selection on validation scores only (test records poisoned), and a 2x2 sweep run
through kfp.local."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import yaml

from imgclf.components.lib.options import ParameterError
from imgclf.pipelines.cli.main import main
from imgclf.pipelines.definitions import sweep
from tests.conftest import TEN, make_folder

GRID = {"parallelism": 2, "grid": {"learning_rate": [0.001, 0.01], "width": [4, 8]}}


@pytest.mark.unit
def test_a_grid_is_every_combination_in_order():
    s = sweep.parse(GRID)
    assert s.trials == ({"learning_rate": 0.001, "width": 4}, {"learning_rate": 0.001, "width": 8},
                        {"learning_rate": 0.01, "width": 4}, {"learning_rate": 0.01, "width": 8})
    assert s.parallelism == 2 and s.metric == "val_accuracy" and s.swept == ["learning_rate", "width"]
    assert [json.loads(i)["index"] for i in s.items()] == [0, 1, 2, 3]
    assert sweep.parse({"grid": {"augment": [True, False], "learning_rate": [1]}}).trials[0] == {
        "augment": True, "learning_rate": 1.0}  # an integer is a lossless float


@pytest.mark.unit
def test_random_samples_are_seeded_typed_and_within_their_declared_bounds():
    """Generated spaces: every draw lies in its range, with the option's type; same seed, same trials."""
    from imgclf.components.train.options import TrainOptions

    declared = {o.name: o for o in TrainOptions.declared()}
    gen = random.Random(3)
    for case in range(40):
        lo_lr = 10 ** gen.uniform(-5, -2)
        lo_d, hi_d = sorted(gen.sample(range(1, 13), 2))
        space = {"learning_rate": {"min": lo_lr, "max": lo_lr * gen.uniform(1, 100), "log": gen.random() < .5},
                 "depth": {"min": lo_d, "max": hi_d}, "architecture": ["baseline", "vgg16"]}
        doc = {"random": {"trials": gen.randint(1, 12), "seed": case, "space": space}}
        s = sweep.parse(doc)
        assert s == sweep.parse(doc) and len(s.trials) == doc["random"]["trials"]
        for t in s.trials:
            assert space["learning_rate"]["min"] * (1 - 1e-5) <= t["learning_rate"] <= \
                space["learning_rate"]["max"] * (1 + 1e-5)
            assert type(t["depth"]) is int and lo_d <= t["depth"] <= hi_d
            assert t["architecture"] in ("baseline", "vgg16")
            for k, v in t.items():
                declared[k].validate(v)
    one = sweep.parse({"random": {"trials": 6, "seed": 1, "space": {"width": {"min": 1, "max": 4096}}}})
    two = sweep.parse({"random": {"trials": 6, "seed": 2, "space": {"width": {"min": 1, "max": 4096}}}})
    assert one.trials != two.trials


@pytest.mark.parametrize("doc, says", [
    ({"grid": {"widht": [4]}}, "sweep widht: not a train option; sweepable: architecture"),
    ({"grid": {"image_size": [16, 32]}}, "image_size is a preprocess option"),
    ({"grid": {"width": [0, 8]}}, "sweep grid.width: parameter width=0: too small"),
    ({"grid": {"architecture": ["resnet"]}}, "parameter architecture='resnet': not an allowed value"),
    ({"grid": {"augment": ["yes"]}}, "parameter augment='yes': expected true or false"),
    ({"grid": {"width": 8}}, "expected a non-empty list of values"),
    ({"grid": {"width": [8, 8]}}, "a value is listed twice"),
    ({"grid": {"learning_rate": [float("nan")]}}, "not a finite number"),
    ({"grid": {"width": list(range(1, 20)), "depth": list(range(1, 13)), "dropout": [0.1, 0.2]}}, "at most 256"),
    ({"grid": {"width": [8]}, "random": {}}, "exactly one of grid: or random:"),
    ({"grid": {"width": [8]}, "parallelism": 0}, "sweep parallelism: an integer >= 1"),
    ({"grid": {"width": [8]}, "metric": "test_accuracy"}, "sweep metric: one of val_accuracy, val_loss"),
    ({"grid": {"width": [8]}, "trails": 3}, "sweep trails: unknown key"),
    ({"random": {"trials": 0, "space": {"width": [8]}}}, "random.trials: an integer from 1 to 256"),
    ({"random": {"trials": 2, "space": {"width": {"min": 8, "max": 4}}}}, "min 8 is above max 4"),
    ({"random": {"trials": 2, "space": {"width": {"min": 0, "max": 4}}}}, "width=0: too small"),
    ({"random": {"trials": 2, "space": {"architecture": {"min": 1, "max": 2}}}}, "a range needs a numeric option"),
    ({"random": {"trials": 2, "space": {"learning_rate": {"min": 0.1, "max": 1, "log": "yes"}}}}, "true or false"),
    ([1, 2], "expected a mapping with grid: or random:"),
])
@pytest.mark.unit
def test_bad_sweeps_are_refused_naming_the_problem(doc, says):
    with pytest.raises(ParameterError) as e:
        sweep.parse(doc)
    assert says in str(e.value)


def test_run_refuses_a_bad_sweep_before_any_work(tmp_path, capsys):
    data = make_folder(tmp_path / "data", TEN[:2], 10)
    bad = tmp_path / "sweep.yaml"
    bad.write_text("grid:\n  depth: [2, 13]\n")
    root = tmp_path / "runs"
    assert main(["run", "--data", str(data), "--sweep", str(bad), "--pipeline-root", str(root)]) == 1
    assert "sweep grid.depth: parameter depth=13: too large" in capsys.readouterr().err
    bad.write_text("grid:\n  fine_tune_layers: [10]\n")  # fine with the run's parameters? val_fraction=0 is not
    assert main(["run", "--data", str(data), "--sweep", str(bad), "--val-fraction", "0",
                 "--pipeline-root", str(root)]) == 1
    assert "scores its trials on the validation split" in capsys.readouterr().err
    bad.write_text("grid: [unclosed\n")
    assert main(["run", "--data", str(data), "--sweep", str(bad), "--pipeline-root", str(root)]) == 1
    assert "not YAML or JSON" in capsys.readouterr().err
    assert not root.exists()
    assert main(["compile", "--sweep", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "p.yaml")]) == 1
    assert "missing.yaml: No such file" in capsys.readouterr().err


def _tasks(spec: dict) -> dict:
    """Every task of every DAG, by task name."""
    found = dict(spec["root"]["dag"]["tasks"])
    for c in spec["components"].values():
        found.update(c.get("dag", {}).get("tasks", {}))
    return found


@pytest.mark.parametrize("target, accelerator", [("kfp", "nvidia.com/gpu"), ("vertex", "NVIDIA_L4")])
@pytest.mark.unit
def test_a_sweep_compiles_to_a_parallel_for_with_its_limit_and_gpu_trials(tmp_path, target, accelerator):
    f = tmp_path / "sweep.json"  # JSON is YAML
    f.write_text(json.dumps(GRID))
    out = tmp_path / "p.yaml"
    gpu = ["--gpu-type", "NVIDIA_L4"] if target == "vertex" else []
    assert main(["compile", "--target", target, "--sweep", str(f), *gpu, "--image", "ghcr.io/acme/imgclf:1",
                 "--gpu-image", "ghcr.io/acme/imgclf-gpu:1", "-o", str(out)]) == 0
    spec, *platform = yaml.safe_load_all(out.read_text())
    assert len(platform) == (1 if target == "kfp" else 0)
    tasks = _tasks(spec)
    assert "train" not in tasks  # the trials replace it
    (name, loop), = [(n, t) for n, t in tasks.items() if t["taskInfo"]["name"] == "sweep"]
    assert loop["iteratorPolicy"] == {"parallelismLimit": 2}
    items = [json.loads(i) for i in json.loads(loop["parameterIterator"]["items"]["raw"])]
    assert items == [{"index": i, "options": t} for i, t in enumerate(sweep.parse(GRID).trials)]
    trial = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["trial"]
    assert trial["retryPolicy"]["maxRetryCount"] == 3  # a preempted trial resumes from its backup
    select = tasks["select"]
    assert select["inputs"]["artifacts"]["models"]["taskOutputArtifact"] == {"producerTask": name,
                                                                             "outputArtifactKey": "pipelinechannel--trial-model"}
    assert select["inputs"]["parameters"]["results"]["taskOutputParameter"]["producerTask"] == name
    assert select["inputs"]["parameters"]["metric"]["runtimeValue"]["constant"] == "val_accuracy"
    for consumer in ("evaluate", "export"):
        assert tasks[consumer]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "select"
    assert tasks["publish"]["inputs"]["artifacts"]["model"] == {"componentInputArtifact": "pipelinechannel--select-model"}
    executors = spec["deploymentSpec"]["executors"]
    res = executors["exec-trial"]["container"]["resources"]["accelerator"]
    assert (res["resourceType"], res["resourceCount"]) == (accelerator, "1")
    assert all("accelerator" not in e["container"].get("resources", {}) for n, e in executors.items()
               if n != "exec-trial")
    if target == "kfp":
        k8s = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-trial"]
        assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
        executors_k8s = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert all(executors_k8s[e]["secretAsEnv"] for e in ("exec-trial", "exec-select"))  # store credentials
    assert "Sweep: 4 trials over learning_rate, width, 2 at a time" in spec["pipelineInfo"]["description"]


@pytest.fixture(scope="module")
def small_records(tmp_path_factory):
    from imgclf.components.ingest.step import ingest
    from imgclf.components.preprocess.step import preprocess

    tmp = tmp_path_factory.mktemp("sweep-records")
    ingest(str(make_folder(tmp / "src", TEN[:3], 20)), str(tmp / "ds"))
    preprocess(str(tmp / "ds"), str(tmp / "pp"), image_size=16, color_mode="grayscale", val_fraction=0.2,
               test_fraction=0.2, seed=1)
    return tmp / "pp"


TINY = {"epochs": 1, "batch_size": 16, "depth": 1, "augment": False}


def test_trials_and_selection_never_read_the_test_split(small_records, tmp_path):
    """The test shards are replaced with garbage: a trial or the selection that read one would fail
    (TensorFlow's record checksum), and a failed trial is recorded as such. Control: evaluate, which
    does read them, fails on the same records."""
    import shutil

    from imgclf.components.contracts import RecordsMetadata
    from imgclf.components.evaluate.step import evaluate
    from imgclf.components.sweep.select import select
    from imgclf.components.train.trial import run_trial

    poisoned = tmp_path / "pp"
    shutil.copytree(small_records, poisoned)
    meta = RecordsMetadata.load(str(poisoned))
    assert meta.count("test") > 0
    for path in meta.shard_paths(str(poisoned), "test"):
        with open(path, "r+b") as f:
            f.write(b"\xff" * 64)  # the first record's length and checksums: unreadable
    items = sweep.parse({"grid": {"width": [4, 8]}}).items()
    results = [run_trial(str(poisoned), str(tmp_path / f"m{i}"), item, **TINY) for i, item in enumerate(items)]
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    s = select([r.to_json() for r in results], [str(tmp_path / "m0"), str(tmp_path / "m1")], str(tmp_path / "best"),
               report_html=str(tmp_path / "sweep.html"))
    assert s.winner.index in (0, 1) and s.winner.val_accuracy == max(r.val_accuracy for r in results)
    assert (tmp_path / "best" / "model.keras").is_file() and not (tmp_path / "best" / "trial.json").exists()
    page = (tmp_path / "sweep.html").read_text()
    assert "Sweep winner: trial" in page and "data:image/png;base64," in page
    with pytest.raises(Exception, match="(?i)corrupt|checksum|DataLoss|truncated"):
        evaluate(str(poisoned), str(tmp_path / "best"), str(tmp_path / "pred"))


def test_a_failed_trial_is_its_result_and_only_all_failed_fails_the_sweep(small_records, tmp_path):
    from imgclf.components.contracts import SweepResult
    from imgclf.components.sweep.select import AllTrialsFailed, select
    from imgclf.components.train.trial import run_trial

    items = sweep.parse({"grid": {"class_weight": ["auto", "NoSuchClass=2"]}}).items()
    ok = run_trial(str(small_records), str(tmp_path / "m0"), items[0], **TINY)
    bad = run_trial(str(small_records), str(tmp_path / "m1"), items[1], **TINY)
    assert ok.status == "ok" and bad.status == "failed"
    assert bad.error.startswith("ValueError: class_weight: 'NoSuchClass=2' is not name=weight for a class")
    assert json.loads((tmp_path / "m1" / "trial.json").read_text())["status"] == "failed"  # the artifact exists
    s = select([ok.to_json(), bad.to_json()], [str(tmp_path / "m0"), str(tmp_path / "m1")], str(tmp_path / "best"),
               metric="val_loss")
    assert s.winner.index == 0 and s.failed == 1
    kept = SweepResult.load(str(tmp_path / "best"))
    assert kept.metric == "val_loss" and [t["status"] for t in kept.trials] == ["ok", "failed"]
    with pytest.raises(AllTrialsFailed, match=r"all 2 trials of the sweep failed:\n  trial 1 .*NoSuchClass"):
        select([bad.to_json(), bad.to_json()], [str(tmp_path / "m1")] * 2, str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_a_2x2_sweep_runs_through_kfp_local_and_only_the_winner_is_evaluated(tmp_path):
    data = make_folder(tmp_path / "data", TEN[:3], 14)
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(GRID))
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.pipelines.cli.main", "run", "--data", str(data), "--sweep", str(f), "--image-size", "16",
         "--color-mode", "grayscale", "--epochs", "1", "--batch-size", "16", "--depth", "1", "--no-augment",
         "--val-fraction", "0.2", "--test-fraction", "0.2", "--pipeline-root", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = proc.stdout[proc.stdout.index("=== imgclf run finished"):]
    assert "test accuracy :" in summary and "  select " in summary and "  evaluate " in summary
    run_dir = next((tmp_path / "runs").iterdir())
    trials = sorted(run_dir.glob("for-loop-*-iteration-*/trial/model/trial.json"))
    assert len(trials) == 4 and all(json.loads(t.read_text())["status"] == "ok" for t in trials)
    assert not list(run_dir.glob("**/train/model"))  # no single train task
    sweep_page = open(summary.split("sweep report  : ")[1].split("\n")[0]).read()
    report = open(summary.split("HTML report   : ")[1].split("\n")[0]).read()
    for page in (sweep_page, report):
        assert "Sweep winner: trial" in page and "Sweep trials (4;" in page
    winner = json.loads((run_dir / "select" / "model" / "sweep.json").read_text())
    scores = {t["index"]: t["val_accuracy"] for t in winner["trials"]}
    assert scores[winner["winner"]] == max(scores.values())


def test_submit_and_schedule_take_a_sweep_and_refuse_a_bad_one_before_sending(tmp_path, capsys):
    from tests.kfp_double import KfpDouble

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(GRID))
    bad.write_text("grid:\n  learning_rate: [0.001, 20]\n")
    d = KfpDouble()
    try:
        base = ["--backend", "kfp", "--host", d.url, "--pipeline-root", "minio://mlpipeline/v2", "--allow-local-image"]
        assert main(["submit", *base, "--sweep", str(good), "data=s3://images/flowers", "epochs=3"]) == 0
        assert main(["schedule", "create", *base, "--sweep", str(good), "--cron", "0 3 * * *",
                     "data=s3://images/flowers"]) == 0
        assert len(d.runs) == 1 and len(d.recurring) == 1
        sent = len(d.requests)
        assert main(["submit", *base, "--sweep", str(bad), "data=s3://images/flowers"]) == 1
        assert "parameter learning_rate=20.0: too large" in capsys.readouterr().err
        # The sweep is checked with the run's parameters: no validation split, nothing to score trials on.
        assert main(["submit", *base, "--sweep", str(good), "data=s3://x", "val_fraction=0.0"]) == 1
        assert main(["submit", *base, "--sweep", str(good), "--package", str(good), "data=s3://x"]) == 1
        assert "give it or --package, not both" in capsys.readouterr().err
        assert len(d.requests) == sent  # nothing sent
    finally:
        d.stop()
    assert not d.rejected, d.rejected
