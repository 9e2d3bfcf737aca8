"""The Kubernetes manifests in k8s/: valid against the Kubernetes schemas offline, consistent
with each other (labels, selectors, ports, names), consistent with the server (probe and scrape
paths it serves, settings it knows, the metric the autoscaler scales on), and the Deployment's
pod really starts and gets ready under `podman kube play` with the image built from the
Dockerfile. The GPU overlay renders with kustomize and changes only what a GPU needs."""

import copy
import json
import re
from pathlib import Path
from typing import Any

import grpc
import httpx
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from inscale.models.config import load_model_config
from inscale.settings import BUNDLED_REPOSITORY, ServerSettings
from support.containers import (
    ROOT,
    Container,
    build_image,
    free_port,
    kube_play,
    podman,
    podman_problem,
    unique_name,
)
from support.grpc_health import health_status, wait_serving
from support.kustomize import kustomize
from support.server import ServerProcess, running_server

K8S = ROOT / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
# The oldest and newest Kubernetes whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ["1.25", kubernetes_validate.latest_version()]
IMAGE_UID = 10001  # the Dockerfile's USER

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def base_docs() -> list[Doc]:
    return [doc for path in MANIFESTS for doc in load(path)]


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[Doc]) -> Doc:
    spec: Doc = find(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def server_container(docs: list[Doc]) -> Doc:
    containers: list[Doc] = pod_spec(docs)["containers"]
    (container,) = [c for c in containers if c["name"] == "inscale"]
    return container


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def settings_data(docs: list[Doc]) -> dict[str, str]:
    data: dict[str, str] = find(docs, "ConfigMap", "inscale-settings")["data"]
    return data


def probes(container: Doc) -> dict[str, Doc]:
    kinds = ("startupProbe", "readinessProbe", "livenessProbe")
    return {kind: container[kind]["httpGet"] for kind in kinds}


def container_port(container: Doc, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def http_port(container: Doc) -> int:
    return container_port(container, "http")


def grpc_port(container: Doc) -> int:
    return container_port(container, "grpc")


def commented_grpc_probe() -> Doc:
    """The gRPC readiness probe the Deployment documents as a commented alternative, parsed."""
    lines = (K8S / "20-deployment.yaml").read_text().splitlines()
    start = lines.index("          #   readinessProbe:")
    block = []
    for line in lines[start:]:
        found = re.match(r"^( *)#   (.*)$", line)
        if found is None:
            break
        block.append(found.group(1) + found.group(2))
    probe: Doc = yaml.safe_load("\n".join(block))["readinessProbe"]
    return probe


def resolve_port(container: Doc, port: int | str) -> int:
    """A probe's or policy's port as the kubelet resolves it: a number, or a container port name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


# --- offline validation --------------------------------------------------------------------


def test_every_file_in_k8s_is_a_kubernetes_object_and_the_namespace_comes_first() -> None:
    # `kubectl apply -f k8s/` applies every .yaml there in name order and rejects anything that
    # is not an API object (a kustomization.yaml would break it).
    for path in MANIFESTS:
        for doc in load(path):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path.name
    assert [d["kind"] for d in load(MANIFESTS[0])] == ["Namespace"]
    namespace = find(base_docs(), "Namespace")["metadata"]["name"]
    for doc in base_docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_strictly_against_the_kubernetes_schemas(version: str) -> None:
    for doc in base_docs():
        kubernetes_validate.validate(doc, version, strict=True)


def test_labels_and_selectors_agree() -> None:
    docs = base_docs()
    deployment = find(docs, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    service = find(docs, "Service")
    # Each of these selects exactly the server's pods.
    assert service["spec"]["selector"] == selector
    assert find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert find(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == selector
    for spread in pod_spec(docs)["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"] == selector
    target = find(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    # The ServiceMonitor (k8s/servicemonitor/) finds the Service and its named port.
    (monitor,) = load(K8S / "servicemonitor/servicemonitor.yaml")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    # The operator's `job` label is the Service's name; the rules and dashboards select on it.
    assert service["metadata"]["name"] == "inscale"


def test_config_maps_and_volumes_referenced_by_the_pod_exist() -> None:
    docs = base_docs()
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for volume in volumes.values():
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_maps
    for container in spec["initContainers"] + spec["containers"]:
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, mount


def test_ports_agree_everywhere() -> None:
    docs = base_docs()
    container = server_container(docs)
    port, port_grpc = http_port(container), grpc_port(container)
    env = env_of(container)
    assert int(env["INSCALE_PORT"]) == port
    assert int(env["INSCALE_GRPC_PORT"]) == port_grpc
    for probe in probes(container).values():
        assert resolve_port(container, probe["port"]) == port
    service_ports = {p["name"]: p for p in find(docs, "Service")["spec"]["ports"]}
    assert service_ports.keys() == {"http", "grpc"}
    assert resolve_port(container, service_ports["http"]["targetPort"]) == port
    assert resolve_port(container, service_ports["grpc"]["targetPort"]) == port_grpc
    # Clients reach gRPC on the Service at the port they would use on the pod, as HTTP.
    assert service_ports["grpc"]["port"] == port_grpc and service_ports["http"]["port"] == port
    assert service_ports["grpc"]["appProtocol"] == "grpc"
    annotations = find(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    # Every rule allows HTTP (Prometheus scrapes there); clients' rules allow gRPC too.
    allowed = [
        [resolve_port(container, p["port"]) for p in rule["ports"]]
        for rule in find(docs, "NetworkPolicy")["spec"]["ingress"]
    ]
    assert all(port in ports and set(ports) <= {port, port_grpc} for ports in allowed), allowed
    assert any(port_grpc in ports for ports in allowed), allowed
    # The image listens there by default too, and so does the server without the image.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {port} {port_grpc}$", dockerfile, re.MULTILINE)
    assert f"INSCALE_PORT={port}" in dockerfile and f"INSCALE_GRPC_PORT={port_grpc}" in dockerfile
    assert ServerSettings.model_fields["grpc_port"].default == port_grpc


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_documented_grpc_readiness_probe_is_valid_and_asks_the_grpc_port(
    version: str,
) -> None:
    docs = base_docs()
    probe = commented_grpc_probe()
    # gRPC probes take a port number only (no name), and the health service answers "" for
    # the whole server's readiness: the same question as /health/ready.
    assert probe["grpc"] == {"port": grpc_port(server_container(docs)), "service": ""}
    assert probe.keys() - {"grpc"} == server_container(docs)["readinessProbe"].keys() - {"httpGet"}
    deployment = copy.deepcopy(find(docs, "Deployment"))
    container = server_container([deployment])
    container["readinessProbe"] = probe
    kubernetes_validate.validate(deployment, version, strict=True)


def test_pod_is_hardened() -> None:
    docs = base_docs()
    spec = pod_spec(docs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == IMAGE_UID
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # The Service is named inscale: service links would inject INSCALE_PORT=tcp://..., which
    # is one of the server's own settings.
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in spec["initContainers"] + spec["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys()
        for mount in container["volumeMounts"]:
            if not mount.get("readOnly"):
                assert "emptyDir" in volumes[mount["name"]], f"{mount} writes outside emptyDirs"
    mounts = {m["mountPath"]: m for m in server_container(docs)["volumeMounts"]}
    assert not mounts["/tmp"].get("readOnly")  # scratch, and --workers N's metric files
    assert mounts["/models"]["readOnly"] is True


def test_shutdown_fits_in_the_termination_grace_period() -> None:
    docs = base_docs()
    container = server_container(docs)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    drain = float(settings_data(docs)["INSCALE_SHUTDOWN_GRACE_S"])
    # SIGTERM arrives after the preStop pause; the drain must end before SIGKILL, with margin.
    assert pod_spec(docs)["terminationGracePeriodSeconds"] >= pause + drain + 5


def test_settings_config_map_names_only_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = base_docs()
    known = {f"INSCALE_{name.upper()}" for name in ServerSettings.model_fields}
    variables = {**settings_data(docs), **env_of(server_container(docs))}
    unknown = set(variables) - known
    # The settings ignore unknown INSCALE_* variables, so a typo here would go unnoticed.
    assert not unknown, f"not server settings: {sorted(unknown)}"
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = ServerSettings()
    assert str(settings.model_repository) == "/models"
    assert settings.strict_readiness is True


def test_model_configs_are_valid_and_name_bundled_models(tmp_path: Path) -> None:
    docs = base_docs()
    data = find(docs, "ConfigMap", "inscale-model-config")["data"]
    cpu_limit = float(server_container(docs)["resources"]["limits"]["cpu"])
    for key, text in data.items():
        name = key.removesuffix(".yaml")
        assert (BUNDLED_REPOSITORY / name).is_dir(), f"{key}: the image bundles no model {name}"
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.yaml").write_text(text)
        config = load_model_config(folder)
        # More ONNX Runtime threads than the CPU limit only adds throttling.
        assert 0 < config.runtime.intra_op_threads <= cpu_limit
        assert config.runtime.allow_spinning is False  # spinning burns quota, skews the HPA


def test_autoscaler_scales_on_cpu_and_in_flight_requests_up_fast_and_down_slowly() -> None:
    docs = base_docs()
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    kinds = {m["type"]: m for m in spec["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Resource"]["resource"]["target"]["type"] == "Utilization"
    assert kinds["Pods"]["pods"]["target"]["type"] == "AverageValue"
    up, down = spec["behavior"]["scaleUp"], spec["behavior"]["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0 and up["selectPolicy"] == "Max"
    assert any(p["type"] == "Percent" and p["value"] >= 100 for p in up["policies"])
    assert down["stabilizationWindowSeconds"] >= 300 and down["selectPolicy"] == "Min"
    assert all(p["value"] <= 1 and p["periodSeconds"] >= 60 for p in down["policies"])
    # The HPA owns the replica count; a drain always leaves a pod serving.
    assert "replicas" not in find(docs, "Deployment")["spec"]
    budget = find(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"]
    assert spec["minReplicas"] >= 2 and budget < spec["minReplicas"]


# --- against a real server -------------------------------------------------------------------


def scraped_samples(server: ServerProcess) -> dict[str, str]:
    """Each sample name on /metrics, with the type of its family."""
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name] = family.type
    return samples


def test_probe_and_scrape_paths_are_served(bundled_server: ServerProcess) -> None:
    docs = base_docs()
    container = server_container(docs)
    paths = probes(container)
    # Liveness is process health only; readiness and startup wait for the models.
    assert paths["livenessProbe"]["path"] == "/health/live"
    assert paths["readinessProbe"]["path"] == paths["startupProbe"]["path"] == "/health/ready"
    annotations = find(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    (monitor,) = load(K8S / "servicemonitor/servicemonitor.yaml")
    scrape_paths = {annotations["prometheus.io/path"]}
    scrape_paths |= {e["path"] for e in monitor["spec"]["endpoints"]}
    for path in {p["path"] for p in paths.values()} | scrape_paths:
        response = httpx.get(f"{bundled_server.url}{path}", timeout=10)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    for path in scrape_paths:
        response = httpx.get(f"{bundled_server.url}{path}", timeout=10)
        assert response.headers["content-type"].startswith("text/plain")


def test_the_grpc_probe_service_answers_as_the_http_readiness_probe() -> None:
    """What the commented gRPC probe asks, on a server with gRPC on (the image's default)."""
    probe = commented_grpc_probe()["grpc"]
    port = free_port()
    with running_server(None, "--grpc-port", str(port)) as server:
        target = f"127.0.0.1:{port}"
        # The HTTP probe says ready; the gRPC one agrees within a health refresh.
        assert httpx.get(f"{server.url}/health/ready", timeout=5).status_code == 200
        wait_serving(target, probe["service"], timeout_s=10)
        # A model's name asks about that model; a name the server never served is unknown.
        assert health_status(target, "digits-wide") == "SERVING"
        with pytest.raises(grpc.RpcError) as unknown:
            health_status(target, "no-such-model")
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND


def adapter_rules() -> list[Doc]:
    values = yaml.safe_load((K8S / "prometheus-adapter/values.yaml").read_text())
    assert values["rules"]["default"] is False
    rules: list[Doc] = values["rules"]["custom"]
    return rules


def rule_series(rule: Doc) -> str:
    found = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"].strip("'\""))
    assert found is not None, rule["seriesQuery"]
    return found.group(0)


def rule_metric_name(rule: Doc) -> str:
    """The name the custom metrics API serves a rule's series under."""
    series = rule_series(rule)
    assert re.search(rule["name"]["matches"], series), (rule["name"], series)
    return str(re.sub(rule["name"]["matches"], rule["name"].get("as", "$1"), series))


def test_autoscaler_metric_reaches_the_server_through_the_adapter_rule(
    bundled_server: ServerProcess,
) -> None:
    samples = scraped_samples(bundled_server)
    rules = {rule_metric_name(rule): rule for rule in adapter_rules()}
    hpa = find(base_docs(), "HorizontalPodAutoscaler")
    wanted = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert wanted and set(wanted) <= rules.keys(), f"no adapter rule serves {wanted}"
    for name, rule in rules.items():
        # Per pod: the series must carry the pod's namespace and name.
        assert rule["resources"]["overrides"].keys() == {"namespace", "pod"}
        assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
        query = rule["metricsQuery"]
        assert "<<.LabelMatchers>>" in query and "by (<<.GroupBy>>)" in query, name
        assert rule_series(rule) in samples, f"{name}: the server exports no {rule_series(rule)}"
        for metric in re.findall(r"\binscale_[a-z_]+", query.replace("<<.Series>>", "")):
            assert metric in samples, f"{name}: the server exports no {metric}"
    assert samples["inscale_requests_in_flight"] == "gauge"


# --- the GPU overlay ------------------------------------------------------------------------


def render_gpu_overlay() -> list[Doc]:
    rendered = kustomize(K8S / "gpu")
    if rendered is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the GPU overlay")
    return rendered


def test_gpu_overlay_builds_on_every_base_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "gpu/kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [f"../{p.name}" for p in MANIFESTS]


def test_gpu_overlay_renders_valid_manifests_that_differ_only_for_the_gpu() -> None:
    base, gpu = base_docs(), render_gpu_overlay()
    for version in KUBERNETES_VERSIONS:
        for doc in gpu:
            kubernetes_validate.validate(doc, version, strict=True)
    key = [(d["kind"], d["metadata"]["name"]) for d in base]
    assert sorted(key) == sorted((d["kind"], d["metadata"]["name"]) for d in gpu)
    spec = pod_spec(gpu)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu"]
    base_image = server_container(base)["image"]
    for container in spec["initContainers"] + spec["containers"]:
        assert container["image"] == f"{base_image}-gpu"
    server = server_container(gpu)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(server)["INSCALE_PROVIDERS"].split(",")[0] == "cuda"
    # Everything else in the Deployment is the base's.
    stripped = copy.deepcopy(find(gpu, "Deployment"))
    pod = stripped["spec"]["template"]["spec"]
    del pod["nodeSelector"], pod["tolerations"]
    for container in pod["initContainers"] + pod["containers"]:
        container["image"] = base_image
    main = next(c for c in pod["containers"] if c["name"] == "inscale")
    main["env"] = [e for e in main["env"] if e["name"] != "INSCALE_PROVIDERS"]
    main["resources"] = server_container(base)["resources"]
    main["startupProbe"]["failureThreshold"] = server_container(base)["startupProbe"][
        "failureThreshold"
    ]
    assert stripped == find(base, "Deployment")
    # Scaled on requests in flight alone, the same metric the adapter serves.
    (metric,) = find(gpu, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] in {rule_metric_name(r) for r in adapter_rules()}


# --- the Deployment's pod under podman kube play ---------------------------------------------


def for_podman(
    docs: list[Doc], image: str, port: int, port_grpc: int, token: str
) -> tuple[str, list[str]]:
    """The ConfigMaps and the Deployment as podman 4.3 can run them here, and the volumes
    it will create. Only what this machine forces is changed:

    - the image is the one just built, and the pod uses the host network, on free loopback
      ports: container port, INSCALE_PORT and the probes' named port all move to `port`
      together, and INSCALE_GRPC_PORT to `port_grpc`; podman refuses port mappings on the host
      network (so `ports` goes once resolved);
    - restartPolicy OnFailure: podman 4.3 restarts init containers forever under Always;
    - names get a unique suffix: podman turns volumes and ConfigMaps into named volumes;
    - Secret volumes go (with their mounts): podman 4.3 takes them only from its own secret
      store, and the only one here, the control token, is optional.
    """
    docs = copy.deepcopy([d for d in docs if d["kind"] in ("ConfigMap", "Deployment")])
    renamed = {}
    for doc in docs:
        new_name = f"{doc['metadata']['name']}-{token}"
        renamed[doc["metadata"]["name"]] = new_name
        doc["metadata"]["name"] = new_name
    spec = pod_spec(docs)
    spec["hostNetwork"] = True
    spec["restartPolicy"] = "OnFailure"
    secrets = {v["name"] for v in spec["volumes"] if "secret" in v}
    assert all(v["secret"].get("optional") for v in spec["volumes"] if "secret" in v)
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in secrets]
    for container in spec["initContainers"] + spec["containers"]:
        mounts = container.get("volumeMounts", [])
        container["volumeMounts"] = [m for m in mounts if m["name"] not in secrets]
    volume_names = {v["name"]: f"{v['name']}-{token}" for v in spec["volumes"]}
    for volume in spec["volumes"]:
        volume["name"] = volume_names[volume["name"]]
        if "configMap" in volume:
            volume["configMap"]["name"] = renamed[volume["configMap"]["name"]]
    for container in spec["initContainers"] + spec["containers"]:
        container["image"] = image
        for mount in container.get("volumeMounts", []):
            mount["name"] = volume_names[mount["name"]]
        for source in container.get("envFrom", []):
            source["configMapRef"]["name"] = renamed[source["configMapRef"]["name"]]
    server = server_container(docs)
    assert env_of(server)["INSCALE_PORT"] == str(http_port(server))
    assert env_of(server)["INSCALE_GRPC_PORT"] == str(grpc_port(server))
    for probe in probes(server).values():
        assert resolve_port(server, probe["port"]) == http_port(server)
        probe["port"] = port
    del server["ports"]
    for variable in server["env"]:
        if variable["name"] == "INSCALE_PORT":
            variable["value"] = str(port)
        if variable["name"] == "INSCALE_GRPC_PORT":
            variable["value"] = str(port_grpc)
        if variable["name"] == "INSCALE_HOST":
            variable["value"] = "127.0.0.1"
    volumes = [v["name"] for v in spec["volumes"]]
    volumes += [v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v]
    return yaml.safe_dump_all(docs, sort_keys=False), volumes


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_deployment_pod_starts_and_gets_ready_under_podman_kube_play() -> None:
    reason = podman_problem()
    if reason is not None:
        pytest.skip(f"podman cannot run here: {reason}")
    image = build_image("cpu").image
    docs = base_docs()
    port, port_grpc, token = free_port(), free_port(), unique_name("test")
    manifest, volumes = for_podman(docs, image, port, port_grpc, token)
    pod = f"{find(docs, 'Deployment')['metadata']['name']}-{token}-pod-0"
    with kube_play(manifest, volumes):
        container = Container(f"{pod}-inscale", port)
        container.wait_ready(timeout_s=180)
        server = server_container(docs)
        for kind, probe in probes(server).items():
            response = httpx.get(f"{container.url}{probe['path']}", timeout=5)
            assert response.status_code == 200, f"{kind} {probe['path']}: {response.text}"
        # The documented gRPC readiness probe's question gets SERVING from the pod too.
        wait_serving(f"127.0.0.1:{port_grpc}", commented_grpc_probe()["grpc"]["service"], 10)
        # The init container assembled /models from the bundled models and the ConfigMap.
        wide = httpx.get(f"{container.url}/models/digits-wide", timeout=10).json()
        config = yaml.safe_load(
            find(docs, "ConfigMap", "inscale-model-config")["data"]["digits-wide.yaml"]
        )
        assert wide["versions"][0]["state"] == "READY"
        assert (
            wide["versions"][0]["batching"]["max_queue_size"]
            == config["batching"]["max_queue_size"]
        )
        sample = json.loads((ROOT / "service/inscale/bundled_models/sample_input.json").read_text())
        answer = httpx.post(
            f"{container.url}/predict", json={"inputs": sample["inputs"]}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"]["label"] == sample["labels"]
        # The securityContext reached the container: its user, a read-only root, /tmp writable.
        assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
        assert container.exec("id", "-u").stdout.strip() == str(IMAGE_UID)
        assert container.exec("touch", "/opt/inscale/x").returncode != 0
        assert container.exec("touch", "/models/x").returncode != 0
        assert container.exec("touch", "/tmp/x").returncode == 0
        env = container.exec("printenv").stdout
        for name, value in settings_data(docs).items():
            assert f"{name}={value}\n" in env
    leftover = podman("pod", "exists", pod, check=False)
    assert leftover.returncode != 0, f"{pod} was not removed"
