"""The manifests under deploy/ and the Containerfile, checked against each other
and against the code: the socket the driver dials, the flags the binary knows,
the ports the probes hit, and the hardening the DaemonSet promises.

No cluster is needed: every file is parsed with yaml.safe_load_all."""

import os
import posixpath
import re
import subprocess

import pytest
import yaml

from provider_harness import BIN, SLOW, cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
EXAMPLES = os.path.join(DEPLOY, "examples")
PROVIDERS_DIR = "/var/run/secrets-store-csi-providers"
MOUNT_DIR = "/var/run/secrets/nais.io/maskinporten"
# Not applied by kustomize: applying it would overwrite the real credentials.
TEMPLATES = {"secret-template.yaml"}


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def yaml_files(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith((".yaml", ".yml")))


@pytest.fixture(scope="module")
def objects():
    """Every object under deploy/ and deploy/examples/, keyed by (kind, name)."""
    out = {}
    for d in (DEPLOY, EXAMPLES):
        for name in yaml_files(d):
            for doc in load(os.path.join(d, name)):
                if "kind" not in doc or "metadata" not in doc:
                    continue  # Helm values and the like
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in out, f"{key} defined twice"
                out[key] = doc
    return out


@pytest.fixture(scope="module")
def ds(objects):
    return objects[("DaemonSet", "maskinporten-csi-provider")]


@pytest.fixture(scope="module")
def pod(ds):
    return ds["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def provider(pod):
    (c,) = [c for c in pod["containers"] if c["name"] == "provider"]
    return c


def socket_path(container):
    args = container["args"]
    assert args[0] == "serve"
    i = args.index("--socket")
    return args[i + 1]


def flags_from_binary():
    """{env var: flag} from every subcommand's --help (each lists its own flags)."""
    if not os.access(BIN, os.X_OK):
        return {}
    found = {}
    for sub in (("serve",), ("keys", "derive"), ("mount",), ("token",), ("client",)):
        try:
            p = subprocess.run(cli(*sub, "--help"), capture_output=True, text=True,
                               timeout=10 * SLOW, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        found.update((env, flag) for flag, env in
                     re.findall(r"--([a-z0-9-]+)\s+(MPCSI_[A-Z0-9_]+)", p.stdout))
    return found


def flags_from_source():
    """{env var: flag} from src/config.c's table, named as config.c names them."""
    with open(os.path.join(ROOT, "src", "config.c"), encoding="utf-8") as f:
        text = f.read()
    table = text[text.index("static const struct opt opts[]"):]
    table = table[:table.index("};")]
    names = re.findall(r'\{\s*"([a-z0-9-]+)",\s*T_', table)
    return {"MPCSI_" + n.upper().replace("-", "_"): n for n in names}


@pytest.fixture(scope="module")
def known_env():
    from_bin = flags_from_binary()
    from_src = flags_from_source()
    assert from_src, "no flags parsed from src/config.c"
    if from_bin:
        # The binary's table and the source must tell the same story.
        assert from_bin == from_src
        return from_bin
    return from_src


def quantity(q):
    """A Kubernetes quantity as a number: "50m" -> 0.05, "64Mi" -> 67108864."""
    m = re.fullmatch(r"([0-9.]+)(m|k|M|G|Ki|Mi|Gi)?", str(q))
    assert m, f"unparsed quantity {q!r}"
    mult = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[m.group(2)]
    return float(m.group(1)) * mult


def effective_sc(pod, container):
    """Container securityContext over the pod's (the fields both have)."""
    sc = {k: v for k, v in (pod.get("securityContext") or {}).items()
          if k in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile")}
    sc.update(container.get("securityContext") or {})
    return sc


# ---- the socket the driver dials ---------------------------------------------

def test_socket_basename_is_provider_name(objects, provider):
    path = socket_path(provider)
    assert posixpath.dirname(path) == PROVIDERS_DIR
    assert posixpath.basename(path) == "maskinporten.sock"
    spcs = [o for (kind, _), o in objects.items() if kind == "SecretProviderClass"]
    assert spcs, "no SecretProviderClass example"
    for spc in spcs:
        assert spc["spec"]["provider"] + ".sock" == posixpath.basename(path)


def test_socket_matches_code_default(provider):
    with open(os.path.join(ROOT, "include", "config.h"), encoding="utf-8") as f:
        header = f.read()
    default = re.search(r'#define CONFIG_SOCKET_DEFAULT\s+"([^"]+)"', header).group(1)
    name = re.search(r'#define CONFIG_PROVIDER_NAME\s+"([^"]+)"', header).group(1)
    assert socket_path(provider) == default
    assert name == "maskinporten"


def test_host_path_mounted_at_same_path(pod, provider):
    vols = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in provider["volumeMounts"] if m["mountPath"] == PROVIDERS_DIR]
    hp = vols[mount["name"]]["hostPath"]
    assert hp["path"] == PROVIDERS_DIR
    assert not mount.get("readOnly", False), "the provider creates its socket there"


def test_driver_values_use_same_dir():
    (values,) = load(os.path.join(EXAMPLES, "driver-helm-values.yaml"))
    assert values["linux"]["providersDir"] == PROVIDERS_DIR
    assert values["enableSecretRotation"] is True
    assert values["rotationPollInterval"]


# ---- pod and container hardening ---------------------------------------------

def test_pod_settings(ds, pod):
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert pod["hostNetwork"] is False
    assert pod.get("hostPID", False) is False and pod.get("hostIPC", False) is False
    assert pod["automountServiceAccountToken"] is False
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()


def test_provider_security_context(pod, provider):
    sc = effective_sc(pod, provider)
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532 and sc["runAsGroup"] == 65532


def test_init_container_is_narrow(pod):
    for c in pod.get("initContainers", []):
        sc = effective_sc(pod, c)
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc.get("privileged", False) is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) <= {"CHOWN", "FOWNER"}
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        # It prepares for uid 65532, the uid the provider runs as.
        script = " ".join(c["command"])
        assert "65532" in script


def test_resources_set_and_limits_cover_requests(pod):
    for c in pod.get("initContainers", []) + pod["containers"]:
        res = c["resources"]
        for r in ("cpu", "memory"):
            req, lim = quantity(res["requests"][r]), quantity(res["limits"][r])
            assert 0 < req <= lim, f"{c['name']} {r}: request {req} > limit {lim}"


# ---- probes, port, service ---------------------------------------------------

def addr_port(provider, var):
    env = {e["name"]: e.get("value") for e in provider.get("env", [])}
    return int(env[var].rsplit(":", 1)[1])


def metrics_port(provider):
    return addr_port(provider, "MPCSI_METRICS_ADDR")


def test_probes_hit_their_own_named_port(provider):
    ports = {p["name"]: p["containerPort"] for p in provider["ports"]}
    assert ports["metrics"] == metrics_port(provider) == 8095
    # The probes are not served beside /metrics: nobody who reaches it can starve them.
    assert ports["probes"] == addr_port(provider, "MPCSI_PROBE_ADDR") == 8096
    live, ready = provider["livenessProbe"]["httpGet"], provider["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and ready["path"] == "/readyz"
    assert live["port"] == ready["port"] == "probes"
    for probe in (provider["livenessProbe"], provider["readinessProbe"]):
        assert probe["timeoutSeconds"] < probe["periodSeconds"]


def test_network_policy_admits_prometheus_to_metrics_only(objects, ds, provider):
    pol = objects[("NetworkPolicy", "maskinporten-csi-provider")]["spec"]
    assert pol["podSelector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    assert pol["policyTypes"] == ["Ingress"]
    names = {p["name"] for p in provider["ports"]}
    for rule in pol["ingress"]:
        # Every rule names its sources and its ports: none is open to all.
        assert rule.get("from") and rule.get("ports")
        assert [p["port"] for p in rule["ports"]] == ["metrics"]
        assert set(p["port"] for p in rule["ports"]) <= names


def test_service_scrapes_metrics(objects, ds, provider):
    svc = objects[("Service", "maskinporten-csi-provider")]
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    ann = svc["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == metrics_port(provider)
    assert ann["prometheus.io/path"] == "/metrics"
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()


# ---- configuration -----------------------------------------------------------

def test_env_vars_are_known_flags(objects, pod, known_env):
    names = set()
    for c in pod.get("initContainers", []) + pod["containers"]:
        names |= {e["name"] for e in c.get("env", [])}
        for src in c.get("envFrom", []):
            cm = objects[("ConfigMap", src["configMapRef"]["name"])]
            names |= set(cm["data"])
    mpcsi = {n for n in names if n.startswith("MPCSI_")}
    assert mpcsi, "no MPCSI_ variables found"
    unknown = mpcsi - set(known_env)
    assert not unknown, f"not flags of the binary: {sorted(unknown)}"
    for required in ("MPCSI_CLUSTER_NAME", "MPCSI_DIGDIR_URL", "MPCSI_WELL_KNOWN_URL",
                     "MPCSI_ADMIN_CLIENT_ID", "MPCSI_ADMIN_KEY_FILE", "MPCSI_SEED_FILE",
                     "MPCSI_METRICS_ADDR", "MPCSI_LOG_FORMAT"):
        assert required in mpcsi


def test_configmap_is_test_environment(objects):
    data = objects[("ConfigMap", "maskinporten-csi-provider")]["data"]
    assert data["MPCSI_DIGDIR_URL"] == "https://api.test.samarbeid.digdir.no"
    assert data["MPCSI_WELL_KNOWN_URL"] == \
        "https://test.maskinporten.no/.well-known/oauth-authorization-server"
    assert data["MPCSI_LOG_FORMAT"] == "json"


def test_credential_files_are_where_the_pod_puts_them(objects, pod, provider):
    data = objects[("ConfigMap", "maskinporten-csi-provider")]["data"]
    (secret,) = load(os.path.join(DEPLOY, "secret-template.yaml"))
    keys = set(secret["stringData"])
    assert keys == {"admin-key.pem", "admin-chain.pem", "seed"}
    vols = {v["name"]: v for v in pod["volumes"]}
    secret_vols = [v for v in vols.values() if "secret" in v]
    assert [v["secret"]["secretName"] for v in secret_vols] == [secret["metadata"]["name"]]
    assert all(v["secret"]["defaultMode"] == 0o400 for v in secret_vols)
    mounts = {m["mountPath"]: m for m in provider["volumeMounts"]}
    script = " ".join(" ".join(c["command"]) for c in pod["initContainers"])
    for var in ("MPCSI_ADMIN_KEY_FILE", "MPCSI_ADMIN_CERT_FILE", "MPCSI_SEED_FILE"):
        path = data[var]
        mount = mounts[posixpath.dirname(path)]
        assert mount["readOnly"] is True
        assert posixpath.basename(path) in keys
        assert posixpath.basename(path) in script
        # The provider's copy lives in memory, not on the node's disk.
        assert vols[mount["name"]]["emptyDir"]["medium"] == "Memory"


# ---- examples ----------------------------------------------------------------

def test_example_pod_mounts_read_only(objects):
    spcs = {name for (kind, name) in objects if kind == "SecretProviderClass"}
    pods = [o["spec"]["template"]["spec"] for (kind, _), o in objects.items()
            if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job")
            and o["metadata"]["name"] != "maskinporten-csi-provider"]
    pods += [o["spec"] for (kind, _), o in objects.items() if kind == "Pod"]
    assert pods, "no example workload"
    for spec in pods:
        sa = spec["serviceAccountName"]
        assert sa != "default" and ("ServiceAccount", sa) in objects
        csi = {v["name"]: v["csi"] for v in spec["volumes"] if "csi" in v}
        assert csi
        for v in csi.values():
            assert v["driver"] == "secrets-store.csi.k8s.io"
            assert v["readOnly"] is True
            assert v["volumeAttributes"]["secretProviderClass"] in spcs
        mounts = [m for c in spec["containers"] for m in c.get("volumeMounts", [])
                  if m["name"] in csi]
        assert mounts
        for m in mounts:
            assert m["mountPath"] == MOUNT_DIR
            assert m["readOnly"] is True


def test_example_parameters_are_the_providers(objects):
    with open(os.path.join(ROOT, "src", "mount.c"), encoding="utf-8") as f:
        m = re.search(r"param_keys\[\]\s*=\s*\{([^}]*)\}", f.read())
    if not m:
        pytest.skip("src/mount.c has no param_keys table to compare with")
    allowed = set(re.findall(r'"([^"]+)"', m.group(1)))
    for (kind, _), spc in objects.items():
        if kind != "SecretProviderClass":
            continue
        params = spc["spec"]["parameters"]
        assert set(params) <= allowed
        assert re.fullmatch(r"0[0-7]{3}", params["filePermission"])
        for obj in spc["spec"].get("secretObjects", []):
            for d in obj["data"]:
                assert d["objectName"].startswith("MASKINPORTEN_")


# ---- kustomization -----------------------------------------------------------

def test_kustomization_lists_every_manifest():
    (k,) = load(os.path.join(DEPLOY, "kustomization.yaml"))
    listed = set(k["resources"])
    present = set(yaml_files(DEPLOY)) - {"kustomization.yaml"}
    assert listed == present - TEMPLATES
    assert not listed & TEMPLATES
    assert k["namespace"] == "maskinporten-csi"
    for name in listed:
        for doc in load(os.path.join(DEPLOY, name)):
            assert doc["kind"] != "Secret", f"{name}: kustomize would overwrite credentials"


def test_kustomize_renders_if_available():
    try:
        p = subprocess.run(["kubectl", "kustomize", DEPLOY], capture_output=True, text=True,
                           timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("kubectl is not installed")
    assert p.returncode == 0, p.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(p.stdout) if d]
    assert "DaemonSet" in kinds


# ---- Containerfile -----------------------------------------------------------

def containerfile_stages():
    """[(FROM line, [instructions])] with continuation lines joined."""
    with open(os.path.join(DEPLOY, "Containerfile"), encoding="utf-8") as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        else:
            stages[-1][1].append(line)
    return stages


def test_containerfile_final_stage():
    stages = containerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    assert all("debian:12-slim" in frm for frm, _ in stages)
    build_from, build = stages[0]
    assert any("make BUILD=/out" in i for i in build)
    final_from, final = stages[-1]
    users = [i.split(None, 1)[1] for i in final if i.upper().startswith("USER ")]
    assert users, "final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root") and int(uid) == 65532
    installs = " ".join(i for i in final if "apt-get install" in i)
    pkgs = set(re.findall(r"\b(lib[a-z0-9.+-]+|ca-certificates)\b", installs))
    assert not [p for p in pkgs if p.endswith("-dev")], pkgs
    assert {"libgrpc29", "libprotobuf-c1", "libcurl4", "libjansson4", "libssl3",
            "libmicrohttpd12", "ca-certificates"} <= pkgs
    assert not any("build-essential" in i for i in final)
    assert any(i.startswith("COPY --from=build") for i in final)
    assert any(i.startswith("ENTRYPOINT") and "maskinporten-csi-provider" in i for i in final)
    assert 'CMD ["serve"]' in final


def test_containerfile_installs_what_the_makefile_links():
    """Every pkg-config module the Makefile links has its -dev package in the build stage."""
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        pkgs = re.search(r"^PKGS\s*:=\s*(.*)$", f.read(), re.M).group(1).split()
    dev = {"grpc_unsecure": "libgrpc-dev", "libprotobuf-c": "libprotobuf-c-dev",
           "libcurl": "libcurl4-openssl-dev", "jansson": "libjansson-dev",
           "libcrypto": "libssl-dev", "libssl": "libssl-dev",
           "libmicrohttpd": "libmicrohttpd-dev"}
    _, build = containerfile_stages()[0]
    installs = " ".join(i for i in build if "apt-get install" in i)
    for p in pkgs:
        assert p in dev, f"Makefile links {p}: add its Debian package here and in the image"
        assert dev[p] in installs


# ---- docs/operations.md ------------------------------------------------------

def test_operations_doc_covers_every_variable_and_metric(known_env):
    with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as f:
        doc = f.read()
    missing = [v for v in known_env if f"`{v}`" not in doc]
    assert not missing, f"docs/operations.md does not document {missing}"
    with open(os.path.join(ROOT, "src", "metrics.c"), encoding="utf-8") as f:
        metrics = set(re.findall(r'"(mpcsi_[a-z_]+?)(?:_bucket|_sum|_count)?[ "{]', f.read()))
    assert "mpcsi_mounts_total" in metrics
    missing = [m for m in sorted(metrics) if f"`{m}`" not in doc]
    assert not missing, f"docs/operations.md does not list metrics {missing}"
