"""Deploy: serve a published registry version on KServe, Vertex AI or TF Serving on its own.

Everything that can be refused (the name, the canary share, the storage URI's scheme, a version that
was never published or is not complete, a damaged champion record, a registry whose models.config does
not pin the champion that servers are sent to follow) is refused before a file is written or a call is
made. The same function is the
pipeline's optional step after publish and `imgclf deploy`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from imgclf.components.deploy import kserve, tf_serving
from imgclf.components.deploy.kserve import DeployError
from imgclf.components.deploy.options import DeployOptions
from imgclf.components.lib import registry
from imgclf.components.lib.options import takes


@dataclass
class Deployed:
    target: str
    version: int = 0
    files: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    """What the summary says: what was done, and the commands that serve or apply it."""

    def summary(self) -> str:
        return "\n".join(self.lines)


def published_version(opts: DeployOptions) -> tuple[int, bool, int | None]:
    """(the version to deploy, whether an older complete version exists, the champion's version): the
    champion unless one is named. A damaged champion record (RegistryError) and a version that is not
    complete are refused."""
    if not opts.registry:
        raise DeployError("deploy needs the registry the version was published to (registry=...)")
    found = registry.versions(opts.registry, opts.model_name)
    champion = (registry.champion(opts.registry, opts.model_name) or {}).get("version")
    version = opts.model_version or champion or 0
    if not version or version not in found:
        raise DeployError(f"{registry.model_uri(opts.registry, opts.model_name)} has no published version "
                          f"{version or '(no champion yet)'}; published: {found or 'none'}")
    if problem := registry.version_problem(opts.registry, opts.model_name, version):
        raise DeployError(f"{registry.version_uri(opts.registry, opts.model_name, version)} is not a complete version "
                          f"({problem}): it cannot be served; 'imgclf registry check "
                          f"{registry.model_uri(opts.registry, opts.model_name)}' says what is wrong")
    return version, any(v < version for v in found), champion


def serving_config_pins(opts: DeployOptions, version: int) -> None:
    """Refuse to send servers to the registry's models.config unless it pins `version` (the champion)."""
    pinned = registry.serving_config_version(opts.registry, opts.model_name)
    if pinned != version:
        where = registry.model_uri(opts.registry, opts.model_name)
        state = "is missing or not the one publish writes" if pinned is None else f"pins version {pinned}"
        raise DeployError(f"{where}/{registry.SERVING_CONFIG} {state}, not the champion {version}; servers follow it: "
                          f"run 'imgclf registry check --repair {where}' first")


def deploy_kserve(opts: DeployOptions, version: int, has_previous: bool, champion: int | None,
                  output_dir: str) -> Deployed:
    doc = kserve.manifest(opts, version, has_previous)
    path = kserve.write(doc, output_dir)
    split = (f"canary: {opts.canary_percent} % to version {version}, the rest on the previous revision"
             if has_previous and opts.canary_percent < 100 else f"all traffic to version {version}")
    done = Deployed("kserve", version, [path], [
        f"KServe InferenceService {opts.name} ({split}; its predictor serves version {version} as the registry's "
        f"{registry.SERVING_CONFIG} pins it, at /v1/models/{opts.model_name}): {path}"])
    if opts.apply_manifest and kserve.cluster_configured():
        action, namespace = kserve.apply(doc)
        done.lines.append(f"{action} InferenceService {namespace}/{opts.name} in the cluster; watch it with: "
                          f"kubectl get inferenceservice {opts.name} -n {namespace}")
    else:
        why = "apply_manifest=false" if not opts.apply_manifest else "no cluster configured (no kubeconfig, not a pod)"
        done.lines.append(f"not applied: {why}; apply it with: kubectl apply -f {path}")
    return done


def deploy_vertex(opts: DeployOptions, version: int, has_previous: bool, champion: int | None,
                  output_dir: str) -> Deployed:
    from imgclf.components.deploy import vertex

    d = vertex.deploy(opts, version)
    split = ", ".join(f"{k}: {v} %" for k, v in sorted(d.traffic.items()))
    return Deployed("vertex", version, [], [
        f"Vertex AI model {d.model} (alias {vertex.ALIAS}) deployed to endpoint {d.endpoint}"
        + (" (created)" if d.created_endpoint else ""), f"traffic split: {split}"])


def _follows_registry_config(opts: DeployOptions, version: int, champion: int | None) -> bool:
    """Whether TF Serving on its own reads the registry's models.config: the champion, served under the
    registry's name, from a folder mounted locally (TF Serving reads gs:// itself, with a config of ours)."""
    return version == champion and opts.name == opts.model_name and not opts.registry.startswith("gs://")


def deploy_tf_serving(opts: DeployOptions, version: int, has_previous: bool, champion: int | None,
                      output_dir: str) -> Deployed:
    follow = version == champion
    path, lines = tf_serving.configure(opts, version, follow=follow, output_dir=output_dir)
    return Deployed("tf-serving", version, [path], [f"TF Serving config: {path}", *lines])


def _no_check(*_) -> None:
    return None


def _kserve_early(opts: DeployOptions) -> None:
    kserve.manifest(opts, 1, False)  # the name and the storage URI, refused before the registry is read


def _vertex_early(opts: DeployOptions) -> None:
    from imgclf.components.deploy import vertex

    vertex.artifact_uri(opts, 1)


def _kserve_late(opts: DeployOptions, version: int, champion: int | None) -> None:
    # The predictor serves what the registry's models.config pins: the champion, and only that.
    if version != champion:
        raise DeployError(f"KServe serves the version the registry's {registry.SERVING_CONFIG} pins, the champion "
                          f"(version {champion}); version {version} cannot be deployed there on its own")
    serving_config_pins(opts, version)


def _tf_serving_late(opts: DeployOptions, version: int, champion: int | None) -> None:
    if _follows_registry_config(opts, version, champion):
        serving_config_pins(opts, version)


@dataclass(frozen=True)
class Handler:
    """How one target is deployed: what is refused before the registry is read (`early(opts)`), what is
    refused once the version is known (`late(opts, version, champion)`), and the deployment itself
    (`run(opts, version, has_previous, champion, output_dir)`), called only when both passed."""
    early: Callable[[DeployOptions], None]
    late: Callable[[DeployOptions, int, int | None], None]
    run: Callable[[DeployOptions, int, bool, int | None, str], Deployed]


HANDLERS: dict[str, Handler] = {
    "kserve": Handler(_kserve_early, _kserve_late, deploy_kserve),
    "vertex": Handler(_vertex_early, _no_check, deploy_vertex),
    "tf-serving": Handler(_no_check, _tf_serving_late, deploy_tf_serving),
}
"""Every deploy target but "none" -> its handler; the one place a target is dispatched. A target named
in options.TARGETS without an entry here is refused, never sent to another target's code."""


def handler(target: str) -> Handler:
    """The handler of `target`; refused (DeployError) when it has none."""
    try:
        return HANDLERS[target]
    except KeyError:
        raise DeployError(f"deploy={target}: no handler for this target (handled: {', '.join(HANDLERS)})") from None


@takes(DeployOptions)
def deploy(output_dir: str, opts: DeployOptions) -> Deployed:
    """Deploy the champion (or `model_version`) as `opts.deploy` says; writes manifests into `output_dir`."""
    if opts.deploy == "none":
        print("deploy: deploy=none: nothing deployed", flush=True)
        return Deployed("none", lines=["deploy=none: nothing deployed"])
    target = handler(opts.deploy)
    target.early(opts)
    version, has_previous, champion = published_version(opts)
    target.late(opts, version, champion)
    os.makedirs(output_dir, exist_ok=True)
    done = target.run(opts, version, has_previous, champion, output_dir)
    print("deploy: " + "\ndeploy: ".join(done.lines), flush=True)
    return done
