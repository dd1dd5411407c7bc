"""deploy/ checked offline: the Kubernetes manifests validate strictly against the API's JSON
schemas (kubernetes-validate, a current Kubernetes and an older supported one) and agree with
each other and with hotserve (flags parse, probes and metrics exist, selectors and ports match,
the grace period covers the drain); the Dockerfile parses, its base is slim, it runs as a
non-root user, installs with constraints.txt, and copies only files that exist and that
.dockerignore lets through. Images cannot be built here (no Docker daemon)."""

from __future__ import annotations

import fnmatch
import os

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(REPO, "deploy", "kubernetes")
# The newest Kubernetes the validator knows, and the oldest we claim (native preStop sleep: 1.30).
VERSIONS = ("1.37.0", "1.30.0")


def _manifest_files() -> list[str]:
    return sorted(f for f in os.listdir(K8S) if f.endswith(".yaml") and f != "kustomization.yaml")


def _docs() -> list[dict]:
    out = []
    for name in _manifest_files():
        with open(os.path.join(K8S, name)) as f:
            out += [d for d in yaml.safe_load_all(f) if d]
    return out


def _find(kind: str, name: str) -> dict:
    return next(d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_strictly(version):
    kv = pytest.importorskip("kubernetes_validate")
    docs = _docs()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
                                         "HorizontalPodAutoscaler", "StatefulSet", "PersistentVolumeClaim"}
    for d in docs:
        try:
            kv.validate(d, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{d['kind']}/{d['metadata']['name']} against Kubernetes {version}: {exc.message} at "
                        f"{'.'.join(str(p) for p in exc.path)}")


def test_kustomization_lists_every_manifest():
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        assert sorted(yaml.safe_load(f)["resources"]) == _manifest_files()


def _container() -> dict:
    return _find("Deployment", "hotserve")["spec"]["template"]["spec"]["containers"][0]


def test_deployment_args_are_hotserve_flags_and_the_config_parses():
    from hotserve.cli import build_parser
    from hotserve.cluster.zk import FleetAddress
    from hotserve.core.config import parse_yaml

    c = _container()
    args = [a.replace("$(POD_NAME)", "hotserve-abc") for a in c["args"]]
    ns = build_parser().parse_args(args)
    FleetAddress.parse(ns.fleet)
    assert ns.model_config_file == "/etc/hotserve/models.yaml" and ns.fleet_replica_id == "hotserve-abc"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert os.path.dirname(ns.model_config_file) == mounts["config"]
    models = parse_yaml(_find("ConfigMap", "hotserve-models")["data"]["models.yaml"])
    assert models and all(m.base_path.startswith(mounts["models"] + "/") for m in models)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": ns.rest_api_port, "grpc": ns.port}


def test_deployment_shutdown_probes_and_security():
    from hotserve.cli import build_parser

    pod = _find("Deployment", "hotserve")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ns = build_parser().parse_args(c["args"])
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    # preStop, then the drain, then in-flight requests (bounded by the REST timeout) must fit.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + ns.drain_seconds + ns.rest_api_timeout_in_ms / 1000
    assert ns.drain_seconds > 0
    assert c["startupProbe"]["httpGet"]["path"] == c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    with open(os.path.join(REPO, "src", "hotserve", "server", "rest.py")) as f:
        rest = f.read()
    assert '"/readyz"' in rest and '"/healthz"' in rest
    sc, psc = c["securityContext"], pod["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert psc["runAsNonRoot"] and psc["runAsUser"] != 0
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # the only writable place


def test_services_pdb_and_hpa_point_at_the_deployment():
    from hotserve.observability import metrics

    dep = _find("Deployment", "hotserve")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in _container()["ports"]}
    for svc in (d for d in _docs() if d["kind"] == "Service" and d["metadata"]["name"].startswith("hotserve")):
        assert svc["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    assert _find("PodDisruptionBudget", "hotserve")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _find("HorizontalPodAutoscaler", "hotserve")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "hotserve" and hpa["minReplicas"] >= 2
    names = {m.name for m in metrics.REGISTRY._metrics}
    for m in hpa["metrics"]:
        if m["type"] == "Pods":
            assert m["pods"]["metric"]["name"] in names, "the HPA scales on a metric /metrics does not export"


def test_zookeeper_statefulset_matches_the_fleet_url():
    from hotserve.cli import build_parser

    ns = build_parser().parse_args(_container()["args"])
    sts = _find("StatefulSet", "zookeeper")
    n, svc = sts["spec"]["replicas"], sts["spec"]["serviceName"]
    assert [h.split(":")[0] for h in ns.fleet.split("//")[1].split("/")[0].split(",")] == \
        [f"zookeeper-{i}.{svc}" for i in range(n)]


# -- Dockerfile ------------------------------------------------------------------------------------
def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rules for the patterns we use (glob, '**', '!' exceptions)."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_dockerfile_parses_and_its_inputs_exist():
    dfp = pytest.importorskip("dockerfile_parse")
    parser = dfp.DockerfileParser(path=os.path.join(REPO, "Dockerfile"))
    instructions = parser.structure
    assert "slim" in parser.baseimage, parser.baseimage
    with open(os.path.join(REPO, ".dockerignore")) as f:
        ignore = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    copied = []
    for ins in instructions:
        if ins["instruction"] in ("COPY", "ADD"):
            *sources, _dest = ins["value"].split()
            for src in sources:
                assert not src.startswith("--"), "COPY --from/--chown is not used here"
                assert os.path.exists(os.path.join(REPO, src)), f"COPY {src}: no such file in the repository"
                assert not _ignored(src.rstrip("/"), ignore), f"COPY {src}: excluded by .dockerignore"
                copied.append(src)
    assert {"pyproject.toml", "constraints.txt", "README.md", "src"} <= set(copied)
    for heavy in (".venv", "tests", "bench", ".git", "src/hotserve/__pycache__"):
        assert _ignored(heavy, ignore), f"{heavy} would be sent to the Docker daemon"
    runs = " ".join(i["value"] for i in instructions if i["instruction"] == "RUN")
    assert "-c constraints.txt" in runs and ".[fleet]" in runs
    users = [i["value"] for i in instructions if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    k8s_user = _find("Deployment", "hotserve")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert users[-1].split(":")[0] == str(k8s_user)
    exposed = {int(p) for i in instructions if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    assert exposed == {p["containerPort"] for p in _container()["ports"]}
    entry = next(i["value"] for i in instructions if i["instruction"] == "ENTRYPOINT")
    assert entry.strip() == '["hotserve"]'
