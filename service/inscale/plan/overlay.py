"""A plan written as a kustomize overlay over `k8s/` (or another base of the same shape).

The overlay lists the base's manifests as resources and patches, by the names it finds in
them: the Deployment's replicas and the server container's resources (strategic merge),
the HorizontalPodAutoscaler's minReplicas, maxReplicas and in-flight target (JSON 6902, so
the CPU metric stays the base's own), and the model's config in the model-config ConfigMap
(the measured knobs merged over the base's entry: the plan's figures hold only for the
config that was measured). `workers` goes to the settings ConfigMap's INSCALE_WORKERS.

It reads files one folder up, which kustomize allows only with its load restrictor off:
`kubectl kustomize --load-restrictor=LoadRestrictionsNone DIR`.

A folder is written only if it is empty or holds nothing but what plan wrote there before
(listed in its marker file), so a plan never overwrites someone's own overlay.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inscale.plan.capacity import Plan
from inscale.plan.errors import PlanError

MARKER = ".inscale-plan.json"
IN_FLIGHT_METRIC = "inscale_requests_in_flight"
RENDER = "kubectl kustomize --load-restrictor=LoadRestrictionsNone"
# Knob (as `inscale profile` names it) -> where it lives in a model's config file.
MODEL_KNOBS: dict[str, tuple[str, ...]] = {
    "max_batch_size": ("batching", "max_batch_size"),
    "max_queue_delay_ms": ("batching", "max_queue_delay_ms"),
    "instances": ("instances",),
    "intra_op_threads": ("runtime", "intra_op_threads"),
}
WORKERS_SETTING = "INSCALE_WORKERS"
Manifest = dict[str, Any]


@dataclass
class Base:
    """The names and values of the base an overlay patches."""

    folder: Path
    files: list[Path]
    deployment: Manifest
    container: str
    hpa: Manifest
    in_flight_index: int
    model_config_map: Manifest | None
    settings_config_map: Manifest | None


@dataclass
class Overlay:
    files: dict[str, str]  # file name -> text
    notes: list[str] = field(default_factory=list)


def model_config(knobs: dict[str, float | int], base_text: str | None = None) -> dict[str, Any]:
    """The model's config file with the measured knobs merged over the base's entry."""
    config: dict[str, Any] = dict(yaml.safe_load(base_text) or {}) if base_text else {}
    for knob, path in MODEL_KNOBS.items():
        if knob not in knobs:
            continue
        where = config
        for key in path[:-1]:
            where = where.setdefault(key, {})
        value = knobs[knob]
        where[path[-1]] = int(value) if knob != "max_queue_delay_ms" else float(value)
    return config


def read_base(folder: Path) -> Base:
    try:
        return _read_base(folder)
    except (KeyError, TypeError, IndexError) as exc:
        raise PlanError(
            f"--base {folder}: not shaped like k8s/ (a Deployment, its HPA and ConfigMaps): "
            f"missing {exc}"
        ) from None


def _read_base(folder: Path) -> Base:
    if not folder.is_dir():
        raise PlanError(f"--base {folder}: no such folder (the k8s/ manifests to patch)")
    files = sorted(
        p for p in folder.iterdir()
        if p.suffix in (".yaml", ".yml") and p.stem != "kustomization"
    )  # fmt: skip
    docs: list[Manifest] = []
    for path in files:
        try:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        except yaml.YAMLError as exc:
            raise PlanError(f"--base {path}: not YAML ({exc})") from None
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    if len(deployments) != 1:
        raise PlanError(f"--base {folder}: expected one Deployment, found {len(deployments)}")
    deployment = deployments[0]
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    containers = pod["containers"]
    named = [c for c in containers if c["name"] == name] or containers
    hpas = [
        d for d in docs
        if d.get("kind") == "HorizontalPodAutoscaler"
        and d["spec"]["scaleTargetRef"].get("name") == name
    ]  # fmt: skip
    if len(hpas) != 1:
        raise PlanError(f"--base {folder}: expected one HorizontalPodAutoscaler for {name}")
    metrics = hpas[0]["spec"].get("metrics", [])
    index = [
        i for i, m in enumerate(metrics)
        if m.get("type") == "Pods" and m["pods"]["metric"]["name"] == IN_FLIGHT_METRIC
    ]  # fmt: skip
    if not index:
        raise PlanError(f"--base {folder}: the autoscaler has no Pods metric {IN_FLIGHT_METRIC}")
    maps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    mounted = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
    model_maps = [
        maps[m] for m in mounted
        if m in maps and all(k.endswith(".yaml") for k in maps[m].get("data", {}))
    ]  # fmt: skip
    env_maps = [
        maps[e["configMapRef"]["name"]]
        for e in named[0].get("envFrom", [])
        if "configMapRef" in e and e["configMapRef"]["name"] in maps
    ]
    return Base(
        folder, files, deployment, named[0]["name"], hpas[0], index[0],
        model_maps[0] if model_maps else None, env_maps[0] if env_maps else None,
    )  # fmt: skip


def _target(manifest: Manifest) -> Manifest:
    meta = manifest["metadata"]
    keep = {k: meta[k] for k in ("name", "namespace") if k in meta}
    return {"apiVersion": manifest["apiVersion"], "kind": manifest["kind"], "metadata": keep}


class _Dumper(yaml.SafeDumper):
    """Writes a multi-line string (a config file inside a ConfigMap) as a `|` block."""


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def _dump(comment: str, doc: object) -> str:
    lines = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return lines + yaml.dump(doc, Dumper=_Dumper, sort_keys=False)


def build(plan: Plan, base: Base, relative_base: str, source: str) -> Overlay:
    chosen = plan.chosen
    cpu = str(plan.cores)
    memory = {"request": f"{plan.memory_request_mi}Mi", "limit": f"{plan.memory_limit_mi}Mi"}
    files: dict[str, str] = {}
    notes: list[str] = []
    patches: list[dict[str, Any]] = [{"path": "deployment.yaml"}]
    files["deployment.yaml"] = _dump(
        "Replicas start at the plan's floor (the autoscaler's minReplicas), so an apply resets\n"
        "the count only down to what serves the planned rate. CPU requests = limits: the\n"
        "capacity was measured on exactly this many pinned cores.",
        {
            **_target(base.deployment),
            "spec": {
                "replicas": plan.replicas,
                "template": {"spec": {"containers": [{
                    "name": base.container,
                    "resources": {
                        "requests": {"cpu": cpu, "memory": memory["request"]},
                        "limits": {"cpu": cpu, "memory": memory["limit"]},
                    },
                }]}},
            },
        },
    )  # fmt: skip
    metric = f"/spec/metrics/{base.in_flight_index}/pods"
    hpa_ops = [
        {"op": "replace", "path": "/spec/minReplicas", "value": plan.replicas},
        {"op": "replace", "path": "/spec/maxReplicas", "value": plan.max_replicas},
        # Fails the render if the base's metrics were reordered, rather than patch the wrong one.
        {"op": "test", "path": f"{metric}/metric/name", "value": IN_FLIGHT_METRIC},
        {"op": "replace", "path": f"{metric}/target/averageValue",
         "value": str(plan.in_flight_target)},
    ]  # fmt: skip
    files["hpa.yaml"] = _dump(
        f"In flight per pod at capacity (the knee) was {chosen.concurrency}; the target keeps\n"
        f"{plan.inputs.headroom:g} of it free. The CPU metric is the base's, unchanged.",
        hpa_ops,
    )
    meta = base.hpa["metadata"]
    target = {"group": "autoscaling", "version": "v2", "kind": "HorizontalPodAutoscaler"}
    target |= {k: meta[k] for k in ("name", "namespace") if k in meta}
    patches.append({"path": "hpa.yaml", "target": target})
    if base.model_config_map is None:
        notes.append("the base mounts no model-config ConfigMap: set the knobs by hand")
    else:
        key = f"{plan.model}.yaml"
        data = base.model_config_map.get("data", {})
        if key not in data:
            notes.append(f"the base's model configs had no {key}: the overlay adds one")
        config = model_config(chosen.config, data.get(key))
        files["model-config.yaml"] = _dump(
            f"The config trial {chosen.trial} measured, over the base's {key}.",
            {**_target(base.model_config_map),
             "data": {key: yaml.safe_dump(config, sort_keys=False)}},
        )  # fmt: skip
        patches.append({"path": "model-config.yaml"})
    workers = chosen.config.get("workers")
    settings = base.settings_config_map
    if (
        workers is not None
        and settings is not None
        and str(settings.get("data", {}).get(WORKERS_SETTING)) != str(int(workers))
    ):
        files["settings.yaml"] = _dump(
            f"Trial {chosen.trial} ran {int(workers)} worker processes per server.",
            {**_target(settings), "data": {WORKERS_SETTING: str(int(workers))}},
        )
        patches.append({"path": "settings.yaml"})
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{relative_base}/{p.name}" for p in base.files],
        "patches": patches,
    }
    files["kustomization.yaml"] = _dump(
        f"Written by `inscale plan` from {source}: {plan.inputs.rps:g} req/s under a p99 of\n"
        f"{plan.inputs.slo_p99_ms:g} ms, model {plan.model} version {plan.version}.\n"
        f"  replicas = max(2, ceil({plan.inputs.rps:g} / ({chosen.rps:g} x "
        f"(1 - {plan.inputs.headroom:g}) x {plan.inputs.lb_efficiency:g}))) = {plan.replicas}\n"
        f"Render: {RENDER} DIR | kubectl apply -f -\n"
        "Written again by the next plan into this folder: do not edit by hand.",
        kustomization,
    )
    return Overlay(files, notes)


def write(folder: Path, overlay: Overlay) -> None:
    try:
        _write(folder, overlay)
    except OSError as exc:
        raise PlanError(
            f"--overlay {folder}: cannot write ({exc.strerror}: {exc.filename})"
        ) from None


def _write(folder: Path, overlay: Overlay) -> None:
    marker = folder / MARKER
    if folder.exists():
        if not folder.is_dir():
            raise PlanError(f"--overlay {folder}: exists and is not a folder")
        present = {p.name for p in folder.iterdir()} - {MARKER}
        ours: set[str] = set()
        if marker.is_file():
            try:
                ours = set(json.loads(marker.read_text())["files"])
            except (ValueError, KeyError, TypeError):
                raise PlanError(f"--overlay {folder}: its {MARKER} is not plan's") from None
        foreign = sorted(present - ours)
        if foreign:
            raise PlanError(
                f"--overlay {folder}: not empty and not written by `inscale plan` "
                f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); "
                "give an empty or new folder"
            )
        for name in sorted(ours & present):
            (folder / name).unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in overlay.files.items():
        (folder / name).write_text(text)
    marker.write_text(json.dumps({"written_by": "inscale plan", "files": sorted(overlay.files)}))


def relative(base: Path, overlay: Path) -> str:
    return Path(os.path.relpath(base.resolve(), overlay.resolve())).as_posix()
