"""The CPU image and the pipeline, and the GPU image, in real containers on a real Docker engine.

containers/docker-env.sh installs and starts dockerd when none answers (and stops it afterwards),
makes a local Debian base image (no registry here) and builds the images from this tree. A machine
where that cannot work fails these tests with the reason; it does not skip them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TWO, make_folder

SCRIPT = REPO / "containers" / "docker-env.sh"
STEPS = ["ingest", "preprocess", "train", "evaluate", "export"]
# An image build (up to 15 minutes, `script`'s own limit) runs inside the first test that needs it, on top
# of that test's own containers: twice the suite's default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def script(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    """Our CPU image, built from this tree; the engine is stopped again if this fixture started it."""
    from imgclf.components.kfp_glue.wrappers import IMAGE

    up = script("up")
    if up.returncode:
        pytest.fail(f"no Docker engine could be started here:\n{up.stderr[-3000:]}")
    try:
        built = script("build", "cpu", IMAGE)
        if built.returncode:
            pytest.fail(f"the CPU image did not build:\n{built.stderr[-5000:]}")
        print(built.stderr.splitlines()[-1])
        yield IMAGE
    finally:
        script("down")


def docker_run(image: str, *args: str, work: Path | None = None, read_only: Path | None = None,
               network: str = "none", env: tuple[str, ...] = (), user: str | None = None) -> str:
    """`docker run` as a user would type it; env names are passed by name so values stay off argv."""
    cmd = ["docker", "run", "--rm", f"--network={network}"]
    if work:
        cmd += ["-v", f"{work}:/work"]
    if read_only:
        cmd += ["-v", f"{read_only}:/input:ro"]
    for name in env:
        cmd += ["-e", name]
    if user:
        cmd += ["--user", user]
    done = subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args[:1])} failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return done.stdout


def summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_image_runs_every_step_as_non_root_with_the_hosts_kfp(image):
    import kfp
    import tensorflow as tf

    import imgclf.components

    facts = json.loads(docker_run(image, "python3", "-c", (
        "import json, os, kfp, tensorflow, imgclf.components; print(json.dumps({'uid': os.getuid(), "
        "'kfp': kfp.__version__, 'tf': tensorflow.__version__, 'imgclf': imgclf.components.__version__}))")))
    assert facts == {"uid": 1000, "kfp": kfp.__version__, "tf": tf.__version__, "imgclf": imgclf.components.__version__}
    usage = docker_run(image)  # no arguments: the step list
    assert all(step in usage for step in STEPS)
    helps = docker_run(image, "sh", "-c", "for s in " + " ".join(STEPS) + "; do imgclf-entrypoint $s --help; done")
    for flag in ("--data", "--image-size", "--epochs", "--predictions-dir", "--export-to"):
        assert flag in helps


def test_each_step_by_hand_with_mounts_and_bucket_uris(image, stores, bucket, tmp_path):
    """The README's `docker run` commands, in order: the source and the published model in S3, the
    artifacts in between on a mounted folder, written by the image's non-root user."""
    from imgclf.components.lib import storage
    from imgclf.components.predict.step import predict

    s3, _ = bucket
    src = make_folder(tmp_path / "src", TWO, 24, jpeg_every=3)
    storage.upload_dir(str(src), f"{s3}/src")
    work = tmp_path / "work"
    work.mkdir()
    user = None
    if os.getuid() == 0:
        os.chown(work, 1000, 1000)  # the image's own user writes here
    else:
        user = f"{os.getuid()}:{os.getgid()}"
    store_env = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "IMGCLF_S3_ENDPOINT_URL")

    ing = summary(docker_run(image, "ingest", "--data", f"{s3}/src", "--output-dir", "/work/dataset",
                             "--report-html", "/work/ingest.html", work=work, network="host", env=store_env,
                             user=user))
    assert ing["images"] == 48 and ing["classes"] == sorted(TWO)
    pre = summary(docker_run(image, "preprocess", "--dataset-dir", "/work/dataset", "--output-dir", "/work/records",
                             "--image-size", "28", "--color-mode", "grayscale", "--val-fraction", "0.15",
                             "--test-fraction", "0.2", "--seed", "1", work=work, network="host", env=store_env,
                             user=user))  # reads the images from the bucket again
    assert sum(pre["counts"].values()) == 48
    fit = summary(docker_run(image, "train", "--dataset-dir", "/work/records", "--model-dir", "/work/model",
                             "--epochs", "2", "--batch-size", "16", "--width", "8", "--depth", "2",
                             "--patience", "2", work=work, user=user))
    assert 1 <= fit["epochs_run"] <= 2
    ev = summary(docker_run(image, "evaluate", "--dataset-dir", "/work/records", "--model-dir", "/work/model",
                            "--predictions-dir", "/work/predictions", "--report-html", "/work/report.html",
                            work=work, user=user))
    assert 0.0 <= ev["metrics"]["accuracy"] <= 1.0
    ex = summary(docker_run(image, "export", "--model-dir", "/work/model", "--dataset-dir", "/work/records",
                            "--predictions-dir", "/work/predictions", "--saved-model-dir", "/work/saved_model",
                            "--export-to", f"{s3}/models/by-hand", work=work, network="host", env=store_env,
                            user=user))
    assert ex["published_to"] == f"{s3}/models/by-hand"
    if user is None:
        assert {p.stat().st_uid for p in (work / "dataset", work / "model", work / "saved_model")} == {1000}
    assert (work / "ingest.html").stat().st_size > 0 and (work / "report.html").stat().st_size > 0

    # The published SavedModel answers raw image bytes, straight from the bucket.
    images = sorted(src.rglob("*.*"))[:6]
    result = predict(f"{s3}/models/by-hand", [str(p) for p in images], keep_rows=True)
    assert result.predicted == len(images) and result.failed == 0
    assert {row["class"] for row in result.rows} <= set(TWO)


def _containers_created(image: str, since: float) -> int:
    events = subprocess.run(["docker", "events", "--since", f"{since:.0f}", "--until", f"{time.time() + 1:.0f}",
                             "--filter", "event=create", "--filter", f"image={image}", "--format", "{{.ID}}"],
                            capture_output=True, text=True, timeout=60, check=True)
    return len(events.stdout.split())


def test_pipeline_end_to_end_under_docker_runner(image, stores, bucket, tmp_path):
    """kfp.local's DockerRunner: every task in our image, the source and an exported copy in S3 (endpoint
    and credentials from the environment), the pipeline root and the model registry on local disk: the
    published version must be found on the host (the registry is a declared path parameter, mounted)."""
    from imgclf.components.lib import registry, storage
    from imgclf.components.predict.step import predict
    from imgclf.pipelines.local.docker_runner import docker_runner
    from imgclf.pipelines.local.run import run_local

    s3, _ = bucket
    src = make_folder(tmp_path / "src", TWO, 24, jpeg_every=3)
    storage.upload_dir(str(src), f"{s3}/src")
    params = {"data": f"{s3}/src", "image_size": 28, "color_mode": "grayscale", "epochs": 2, "batch_size": 16,
              "width": 8, "depth": 2, "patience": 2, "val_fraction": 0.15, "test_fraction": 0.2, "seed": 1,
              "export_to": f"{s3}/registry/v1", "registry": str(tmp_path / "registry"), "model_name": "fm"}
    runner, params = docker_runner(params, image)
    assert runner.container_run_args["network_mode"] == "host"  # the source is in a bucket
    start = time.time() - 1
    result = run_local(params, pipeline_root=str(tmp_path / "root"), runner=runner)

    # One container per task that ran: validate, the steps, the champion lookup, the gate, publish and deploy.
    assert set(result.step_seconds) == {"validate", "ingest-plan", "ingest-shard", "ingest", "preprocess-plan",
                                        "preprocess-shard", "preprocess-merge", "champion", "train", "evaluate", "export", "gate",
                                        "publish", "deploy"}   # deploy: the default deploy=none says so and ends
    assert result.decision == "publish"
    assert registry.versions(str(tmp_path / "registry"), "fm") == [1]
    assert (tmp_path / "registry" / "fm" / "1" / "saved_model.pb").is_file()
    assert registry.champion(str(tmp_path / "registry"), "fm")["version"] == 1
    assert _containers_created(image, start) == len(result.step_seconds)
    assert 0.0 <= result.accuracy <= 1.0
    assert (Path(result.saved_model) / "saved_model.pb").is_file()
    assert storage.exists(f"{s3}/registry/v1/saved_model.pb")
    images = sorted(src.rglob("*.*"))[:6]
    answer = predict(f"{s3}/registry/v1", [str(p) for p in images], keep_rows=True)
    assert answer.predicted == len(images) and {row["class"] for row in answer.rows} <= set(TWO)


def test_a_failing_task_fails_imgclf_run_in_docker(image, tmp_path, capsys):
    """`imgclf run --runner docker`: a task that exits non-zero fails the run, named in the error."""
    from imgclf.pipelines.cli.main import main
    from imgclf.pipelines.local.docker_runner import docker_runner

    empty = tmp_path / "empty"
    empty.mkdir()
    runner, params = docker_runner({"data": str(empty)}, image)
    assert runner.container_run_args["network_mode"] == "none"  # every input is local
    assert runner.container_run_args["mounts"][0]["Target"] == str(empty)
    assert main(["run", "--runner", "docker", "--data", str(empty), "--pipeline-root", str(tmp_path / "root")]) == 1
    assert "the pipeline failed in step 'ingest'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def gpu_image() -> str:
    """Our GPU image, built from this tree as `make images` builds it: the local Debian base and the
    registry's CUDA wheels (downloaded once per machine: about 3 GB; then cached in the engine's layers);
    its build ran imgclf-cuda-check, so a build that passed already proved the CUDA layer."""
    from imgclf.pipelines.definitions.platform import gpu_image as name

    up = script("up")
    if up.returncode:
        pytest.fail(f"no Docker engine could be started here:\n{up.stderr[-3000:]}")
    try:
        built = script("build", "gpu", name(), timeout=1500)
        if built.returncode:
            pytest.fail(f"the GPU image did not build:\n{built.stderr[-5000:]}")
        print(built.stderr.splitlines()[-1])
        yield name()
    finally:
        script("down")


def _gpu_check_fails(image: str, damage: str) -> str:
    """imgclf-cuda-check's exit status and message after `damage` (a shell command run as root) in a
    throwaway container: the check must be able to fail, or the build's passing it proves nothing."""
    done = subprocess.run(["docker", "run", "--rm", "--network=none", "--user", "0", "--entrypoint", "sh", image,
                           "-c", f"{damage} && imgclf-cuda-check"], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, f"imgclf-cuda-check passed after {damage!r}:\n{done.stdout[-2000:]}"
    return done.stderr


@pytest.mark.timeout(2700)  # a cold build downloads ~3 GB and installs ~6 GB: the module's 1800 s may not do
def test_gpu_image_has_a_cuda_tensorflow_whose_libraries_load(gpu_image):
    """Built here with no GPU and no driver: TensorFlow is the CUDA build and the only TensorFlow, the CUDA
    and cuDNN libraries TensorFlow was built for load from the wheels, and the package runs as in the CPU
    image (same user, entry point, Keras backend). What needs a GPU (--require-gpu) is checked to fail."""
    import imgclf.components

    facts = json.loads(docker_run(gpu_image, "imgclf-cuda-check").strip().splitlines()[-1])
    assert facts["tensorflow"] == "2.21.0" and facts["gpus"] == []
    cuda, cudnn = str(facts["cuda"]).split(".")[0], str(facts["cudnn"]).split(".")[0]
    assert {f"libcudart.so.{cuda}", f"libcudnn.so.{cudnn}", f"libcublas.so.{cuda}", "libnccl.so.2"} <= set(facts["loaded"])
    pinned = dict(re.findall(r"^(nvidia-[\w-]+)==(\S+)$", (REPO / "containers" / "constraints.txt").read_text(), re.M))
    assert {name.lower(): pinned.get(name.lower()) for name in facts["wheels"]} == facts["wheels"]

    inside = json.loads(docker_run(gpu_image, "python3", "-c", (
        "import json, os, importlib.metadata as md, keras, tensorflow as tf, imgclf.components\n"
        "dists = sorted(d.metadata['Name'].lower().replace('_', '-') for d in md.distributions()\n"
        "               if d.metadata['Name'].lower().startswith('tensorflow'))\n"
        "extra = sorted(r.split('<')[0].split('>')[0].split('=')[0].strip() for r in md.requires('tensorflow')\n"
        "               if 'and-cuda' in r)\n"
        "print(json.dumps({'uid': os.getuid(), 'cuda': tf.test.is_built_with_cuda(), 'backend': keras.backend.backend(),"
        " 'imgclf': imgclf.components.__version__, 'grow': os.environ.get('TF_FORCE_GPU_ALLOW_GROWTH'),"
        " 'tensorflows': dists, 'and_cuda': extra}))")))
    assert set(inside.pop("and_cuda")) <= set(facts["wheels"])  # every wheel TensorFlow's extra names is there
    assert inside == {"uid": 1000, "cuda": True, "backend": "tensorflow", "imgclf": imgclf.components.__version__,
                      "grow": "true", "tensorflows": ["tensorflow", "tensorflow-serving-api"]}
    version = docker_run(gpu_image, "imgclf", "--version")
    assert version.startswith(f"imgclf {imgclf.components.__version__} (") and "tensorflow 2.21.0" in version
    assert "--epochs" in docker_run(gpu_image, "train", "--help")

    # The check fails where it should: no GPU here, a CUDA library broken or missing, a CPU TensorFlow beside.
    no_gpu = subprocess.run(["docker", "run", "--rm", "--network=none", gpu_image, "imgclf-cuda-check",
                             "--require-gpu"], capture_output=True, text=True, timeout=600)
    assert no_gpu.returncode != 0 and "TensorFlow sees no GPU" in no_gpu.stderr
    site = """SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"""
    broken = _gpu_check_fails(gpu_image, f"{site} && echo broken > $SP/nvidia/cudnn/lib/libcudnn.so.{cudnn}")
    assert f"libcudnn.so.{cudnn} does not load" in broken
    missing = _gpu_check_fails(gpu_image, f"{site} && rm $SP/nvidia/cublas/lib/libcublas.so.{cuda}")
    assert f"no libcublas.so.{cuda} in the CUDA wheels" in missing
    dist_info = "$SP/tensorflow_cpu-2.21.0.dist-info"
    beside = (f"{site} && mkdir {dist_info} && printf 'Metadata-Version: 2.1\\nName: tensorflow-cpu\\n"
              f"Version: 2.21.0\\n' > {dist_info}/METADATA")
    assert "found ['tensorflow', 'tensorflow-cpu']" in _gpu_check_fails(gpu_image, beside)
    if "jax" not in facts:  # JAX without its CUDA plugin (multi-worker training would run on the CPU)
        jax = (f"{site} && mkdir $SP/jax-0.10.2.dist-info && printf 'Metadata-Version: 2.1\\nName: jax\\n"
               "Version: 0.10.2\\n' > $SP/jax-0.10.2.dist-info/METADATA")
        assert f"jax 0.10.2 needs its CUDA {cuda} plugins at the same version" in _gpu_check_fails(gpu_image, jax)


def test_instant_non_zero_exits_keep_their_code(image):
    """kfp 2.17.0 reads the exit code after auto_remove may have deleted the container (then reports
    0); the replacement that `exit_codes_kept` installs reads it first, every time."""
    import docker

    from imgclf.pipelines.local.docker_runner import run_container

    client = docker.from_env()
    try:
        codes = [run_container(client, image, ["sh", "-c", "exit 3"], volumes={}, network_mode="none")
                 for _ in range(10)]
    finally:
        client.close()
    assert codes == [3] * 10
