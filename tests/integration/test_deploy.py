"""The manifests under deploy/ and the Containerfile, checked against each other
and against the code: the socket the driver dials, the flags the binary knows,
the ports the probes hit, the hardening the DaemonSet promises, the image
reference a platform team overrides, and the example SecretProviderClass
mounted through the real binary.

No cluster is needed: every file is parsed with yaml.safe_load_all, and
kustomize renders through `kubectl kustomize`. The image itself is built and
checked by `make image` and `make image-test` (tests/image)."""

import os
import posixpath
import re
import shutil
import subprocess

import pytest
import yaml

from provider_harness import BIN, SLOW, Provider, attributes, cli, files_of, modes_of

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
    """{env var: flag} from every subcommand's --help (each lists its own flags). A binary
    that is missing or prints no table fails the tests that use it: nothing here falls back."""
    assert os.access(BIN, os.X_OK), f"no binary at {BIN}: run make"
    found = {}
    for sub in (("serve",), ("keys", "derive"), ("mount",), ("token",), ("client",)):
        p = subprocess.run(cli(*sub, "--help"), capture_output=True, text=True,
                           timeout=10 * SLOW, check=False)
        assert p.returncode == 0, (sub, p.stderr)
        found.update((env, flag) for flag, env in
                     re.findall(r"--([a-z0-9-]+)\s+(MPCSI_[A-Z0-9_]+)", p.stdout))
    assert found, "no --help printed a flag table"
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
    # The binary's table and the source must tell the same story.
    assert from_bin == from_src
    return from_bin


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


def test_init_container_is_narrow(pod, provider):
    (c,) = pod["initContainers"]
    sc = effective_sc(pod, c)
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # prepare gives each file its mode before giving it away: CHOWN is enough
    # (tests/integration/test_prepare.py runs it with exactly this set).
    assert sc["capabilities"]["add"] == ["CHOWN"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    # The provider's own subcommand, from the provider's image.
    assert c["image"] == provider["image"]
    assert "command" not in c and c["args"][0] == "prepare"
    # It prepares for the uid and gid the provider runs as.
    psc = effective_sc(pod, provider)
    user = c["args"][c["args"].index("--user") + 1]
    assert user == "%d:%d" % (psc["runAsUser"], psc["runAsGroup"])


SHELLS = re.compile(r"(^|/)(sh|bash|dash|ash|busybox|env)$")


def test_no_container_runs_a_shell(pod):
    """The image has no shell: every container runs the provider's binary
    through the image's entrypoint, with plain arguments."""
    for c in pod["initContainers"] + pod["containers"]:
        assert "command" not in c, f"{c['name']}: command overrides the entrypoint"
        args = c["args"]
        assert args[0] in ("serve", "prepare"), c["name"]
        for a in args:
            assert not SHELLS.search(a), f"{c['name']} runs a shell: {a}"
            assert a != "-c" and not re.search(r"[;&|`$<>]|\n", a), \
                f"{c['name']}: shell syntax in {a!r}"


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
    (init,) = pod["initContainers"]
    args = init["args"]
    flag_of = {args[i + 1]: args[i] for i in range(len(args) - 1)
               if args[i] in ("--file", "--optional-file")}
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    # It copies from the Secret's volume into the volume the provider reads.
    assert vols[init_mounts[args[args.index("--copy-from") + 1]]]["secret"]
    copy_to = args[args.index("--copy-to") + 1]
    for var in ("MPCSI_ADMIN_KEY_FILE", "MPCSI_ADMIN_CERT_FILE", "MPCSI_SEED_FILE"):
        path = data[var]
        mount = mounts[posixpath.dirname(path)]
        assert mount["readOnly"] is True
        assert posixpath.basename(path) in keys
        assert posixpath.dirname(path) == copy_to
        assert init_mounts[copy_to] == mount["name"]
        # serve cannot start without the key and the seed: the init container
        # refuses a Secret without them; the chain is optional (MPCSI_ADMIN_KID).
        want = "--optional-file" if var == "MPCSI_ADMIN_CERT_FILE" else "--file"
        assert flag_of[posixpath.basename(path)] == want
        # The provider's copy lives in memory, not on the node's disk.
        assert vols[mount["name"]]["emptyDir"]["medium"] == "Memory"
    assert set(flag_of) == keys


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


def example_spcs(objects):
    spcs = [o for (kind, _), o in objects.items() if kind == "SecretProviderClass"]
    assert spcs, "no SecretProviderClass example"
    return spcs


def test_example_parameters_are_the_providers(objects):
    """The parameters are among the keys src/mount.c accepts (its known_keys
    table: a renamed table fails here, it does not skip)."""
    with open(os.path.join(ROOT, "src", "mount.c"), encoding="utf-8") as f:
        m = re.search(r"known_keys\[K_COUNT\]\s*=\s*\{(.*?)\n\};", f.read(), re.S)
    assert m, "src/mount.c: no known_keys table; update this test to its new name"
    allowed = set(re.findall(r'KEY\("([^"]+)"\)', m.group(1)))
    assert {"scopes", "filePermission", "exposes"} <= allowed
    for spc in example_spcs(objects):
        params = spc["spec"]["parameters"]
        assert set(params) <= allowed
        assert re.fullmatch(r"0[0-7]{3}", params["filePermission"])
        for obj in spc["spec"].get("secretObjects", []):
            for d in obj["data"]:
                assert d["objectName"].startswith("MASKINPORTEN_")


@pytest.fixture
def provider_proc(emulator, tmp_path):
    """A running serve: one that cannot start fails the test (RuntimeError)."""
    p = Provider(emulator, tmp_path).start()
    yield p
    p.stop()


def test_example_mounts_through_the_binary(objects, emulator, provider_proc):
    """Each example SecretProviderClass, its scopes granted to the organisation,
    mounts through the real binary: every file named in secretObjects is in the
    answer, with the example's file mode. A misspelt parameter is refused."""
    for spc in example_spcs(objects):
        params = spc["spec"]["parameters"]
        scopes = params["scopes"].replace(",", " ").split()
        for scope in scopes:
            emulator.seed_scope(scope, "999999999", accessible_for_all=True)
        resp = provider_proc.mount_raw(attributes("my-team", "my-app", params=params,
                                                  spc=spc["metadata"]["name"]))
        files = files_of(resp)
        assert files["MASKINPORTEN_SCOPES"].split() == scopes
        for obj in spc["spec"].get("secretObjects", []):
            for d in obj["data"]:
                assert d["objectName"] in files
        assert set(modes_of(resp).values()) == {int(params["filePermission"], 8)}

        misspelt = dict(params, filePermissions=params["filePermission"])
        with pytest.raises(Exception) as e:
            provider_proc.mount_raw(attributes("my-team", "my-app", params=misspelt))
        assert "filePermissions" in str(e.value)


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


def kustomize(directory):
    """The objects `kubectl kustomize directory` renders (kubectl is required:
    it comes with this machine's image, and a missing one fails here)."""
    assert shutil.which("kubectl"), "kubectl is needed for `kubectl kustomize`"
    p = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True,
                       timeout=60 * SLOW, check=False)
    assert p.returncode == 0, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def base_field():
    """Where an overlay names its base directory: `resources` for the kustomize
    inside kubectl 1.24 and later (which print its version), `bases` for the
    kustomize v2 inside Debian 12's kubectl 1.20, which takes only files under
    `resources` (later ones still read `bases`, deprecated)."""
    p = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True,
                       timeout=60 * SLOW, check=False)
    return "resources" if "Kustomize Version" in p.stdout else "bases"


def rendered_images(docs):
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    return [c["image"] for c in spec["initContainers"] + spec["containers"]]


def makefile_version():
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        return re.search(r"^VERSION\s*:=\s*(\S+)", f.read(), re.M).group(1)


def test_kustomize_renders_the_image_of_this_version(pod):
    # The manifests name the image only; kustomization.yaml's images: says which.
    assert {c["image"] for c in pod["initContainers"] + pod["containers"]} == \
        {"maskinporten-csi-provider"}
    docs = kustomize(DEPLOY)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == \
        {"maskinporten-csi"}
    assert rendered_images(docs) == ["maskinporten-csi-provider:" + makefile_version()] * 2


@pytest.mark.parametrize("override,want", [
    ({"newName": "registry.example.org/platform/maskinporten-csi-provider", "newTag": "0.1.0-p1"},
     "registry.example.org/platform/maskinporten-csi-provider:0.1.0-p1"),
    ({"newName": "registry.example.org/mpcsi", "digest": "sha256:" + "ab" * 32},
     "registry.example.org/mpcsi@sha256:" + "ab" * 32),
], ids=["name-and-tag", "digest"])
def test_kustomize_overlay_overrides_the_image(tmp_path, override, want):
    """A platform team's overlay of deploy/ points both containers at its build."""
    shutil.copytree(DEPLOY, tmp_path / "base")
    (tmp_path / "overlay").mkdir()
    overlay = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
               base_field(): ["../base"],
               "images": [dict({"name": "maskinporten-csi-provider"}, **override)]}
    with open(tmp_path / "overlay" / "kustomization.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(overlay, f)
    assert rendered_images(kustomize(str(tmp_path / "overlay"))) == [want, want]


# ---- Containerfile -----------------------------------------------------------

def containerfile_stages():
    """[(FROM line, [instructions])] with continuation lines joined; the ARGs
    before the first FROM are left out."""
    with open(os.path.join(DEPLOY, "Containerfile"), encoding="utf-8") as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        elif stages:
            stages[-1][1].append(line)
        else:
            assert line.upper().startswith("ARG "), line
    return stages


def test_containerfile_final_stage():
    """The final stage starts empty and takes only the build stage's /rootfs;
    make image-test checks what that holds."""
    stages = containerfile_stages()
    assert len(stages) == 2, "a build stage and the final stage"
    with open(os.path.join(DEPLOY, "Containerfile"), encoding="utf-8") as f:
        arg = re.search(r"^ARG BASE=(\S+)$", f.read(), re.M)
    assert arg and "debian:12-slim" in arg.group(1)
    build_from, build = stages[0]
    assert build_from == "FROM ${BASE} AS build"
    assert any("make" in i and "BUILD=/out" in i for i in build)
    assert any("ldd" in i and "/rootfs" in i for i in build)
    final_from, final = stages[-1]
    assert final_from == "FROM scratch"
    assert not [i for i in final if i.upper().startswith(("RUN ", "ADD "))], final
    assert [i for i in final if i.upper().startswith("COPY ")] == ["COPY --from=build /rootfs/ /"]
    users = [i.split(None, 1)[1] for i in final if i.upper().startswith("USER ")]
    assert users == ["65532:65532"]
    assert 'ENTRYPOINT ["/usr/local/bin/maskinporten-csi-provider"]' in final
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
