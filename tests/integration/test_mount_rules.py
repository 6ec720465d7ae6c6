"""The rules a Mount's identity and file mode must meet, through the binary:
ServiceAccount names are DNS-1123 subdomains and namespaces DNS-1123 labels,
exactly as Kubernetes validates them, and the files (one holds a private
key) must be readable by their owner, writable by no one else and not
executable. A refused Mount changes nothing at DigDir."""

import grpc
import pytest

from provider_harness import SLOW, Provider, modes_of

SCOPE = "skatteetaten:testapi"


@pytest.fixture
def provider(emulator, tmp_path):
    with Provider(emulator, tmp_path) as p:
        yield p


def refused(provider, emulator, ns, sa, needle, **kw):
    with pytest.raises(grpc.RpcError) as e:
        provider.mount(ns, sa, scopes=SCOPE, timeout=20 * SLOW, **kw)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert needle in e.value.details(), e.value.details()
    assert emulator.clients() == []


@pytest.mark.parametrize("mode", ["0000", "0777", "0666", "0755", "0200", "0660"])
def test_unsafe_file_modes_are_refused(emulator, provider, mode):
    refused(provider, emulator, "team-r", "app", "mode %s is refused" % mode,
            params={"filePermission": mode})


def test_driver_permission_0777_is_refused(emulator, provider):
    refused(provider, emulator, "team-r", "app", 'field "permission": mode 0777',
            permission="511")


@pytest.mark.parametrize("mode", ["0444", "0600", "0640"])
def test_safe_file_modes_are_taken(provider, mode):
    resp = provider.mount("team-r", "app", scopes=SCOPE, params={"filePermission": mode},
                          timeout=30 * SLOW)
    assert set(modes_of(resp).values()) == {int(mode, 8)}


@pytest.mark.parametrize("ns,sa", [("team-r", "a..b"), ("team-r", ".app"), ("team-r", "app."),
                                   ("team-r", "app.-v2"), ("team.r", "app"),
                                   ("team-r", "a" * 254)])
def test_names_kubernetes_would_refuse_are_refused(emulator, provider, ns, sa):
    refused(provider, emulator, ns, sa, "is not a Kubernetes name")


def test_a_dotted_service_account_name_is_taken(emulator, provider):
    provider.mount("team-r", "app.v2", scopes=SCOPE, timeout=30 * SLOW)
    assert [c["description"] for c in emulator.clients()] == ["dev:team-r:app.v2"]
