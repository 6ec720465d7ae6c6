"""Changes of an app's consumed scopes (issue 15, bug 2): a change reaches DigDir at
once and is never lost to something cached, and two SecretProviderClasses asking for
different scopes for one app are refused with both sets named instead of flipping the
client at every Mount."""

import json
import time

import grpc
import pytest
from jwcrypto import jwk

from harness import client_grant
from provider_harness import SLOW, Provider, files_of

A, B = "skatteetaten:testapi", "nav:test/api"


def digdir_scopes(emu, app):
    [c] = [c for c in emu.clients() if c["description"] == "dev:ns:%s" % app]
    return sorted(c["scopes"])


def token(emu, files, scope):
    key = jwk.JWK(**json.loads(files["MASKINPORTEN_CLIENT_JWK"]))
    return emu.token(client_grant(emu, key, files["MASKINPORTEN_CLIENT_ID"], scope))


def test_a_change_is_registered_at_once(emulator, tmp_path):
    with Provider(emulator, tmp_path) as p:
        files_of(p.mount("ns", "app", scopes="%s %s" % (A, B)))
        files = files_of(p.mount("ns", "app", scopes=A))
    assert digdir_scopes(emulator, "app") == [A]
    assert files["MASKINPORTEN_SCOPES"] == A
    assert token(emulator, files, A).status == 200
    assert token(emulator, files, B).status != 200


def test_our_own_write_updates_the_cached_listing(emulator, tmp_path):
    """"A B", "A", "A B" within two seconds, each Mount looking the app up in the shared
    listing (a one-entry cache and no state file make every Mount a lookup): DigDir must
    end where the pod's files say, never at [A] with files saying "A B"."""
    args = ["--cache-size", "1", "--state-file", "", "--scope-flip-window", "1ms",
            "--listing-reuse", "10m"]
    with Provider(emulator, tmp_path, args=args) as p:
        listings = None
        for scopes in ("%s %s" % (A, B), A, "%s %s" % (A, B)):
            files = files_of(p.mount("ns", "app", scopes=scopes))
            files_of(p.mount("ns", "other", scopes=A))  # pushes "app" out of the cache
            assert sorted(files["MASKINPORTEN_SCOPES"].split()) == digdir_scopes(emulator, "app")
            if listings is None:
                listings = emulator.counts().get("GET /api/v1/clients", 0)
        # After both apps existed, every lookup used the one shared listing.
        assert emulator.counts().get("GET /api/v1/clients", 0) == listings
    assert token(emulator, files, B).status == 200


def test_two_scope_sets_for_one_app_are_refused_not_flipped(emulator, tmp_path):
    """Two SecretProviderClasses for one app: the first change is taken (it may be a
    real one), going back to the earlier set while the new one is in use is refused
    with FailedPrecondition naming both sets, and DigDir keeps one set."""
    with Provider(emulator, tmp_path) as p:
        files_of(p.mount("ns", "app", scopes="%s %s" % (A, B)))
        second = files_of(p.mount("ns", "app", scopes=A))
        with pytest.raises(grpc.RpcError) as exc:
            p.mount("ns", "app", scopes="%s %s" % (A, B))
        e = exc.value
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        assert "[%s %s]" % (B, A) in e.details() and "[%s]" % A in e.details(), e.details()
        assert "SecretProviderClasses" in e.details()
        # The set in use still works, and DigDir holds it.
        assert files_of(p.mount("ns", "app", scopes=A)) == second
    assert digdir_scopes(emulator, "app") == [A]


def test_a_set_changed_back_is_taken_after_the_window(emulator, tmp_path):
    """Changing back on purpose works once the other set has not been asked for during
    the window."""
    with Provider(emulator, tmp_path, args=["--scope-flip-window", "2s"]) as p:
        files_of(p.mount("ns", "app", scopes="%s %s" % (A, B)))
        files_of(p.mount("ns", "app", scopes=A))
        time.sleep(2.2)
        files = files_of(p.mount("ns", "app", scopes="%s %s" % (A, B)))
    assert digdir_scopes(emulator, "app") == [B, A] or digdir_scopes(emulator, "app") == sorted(
        [A, B])
    assert token(emulator, files, B).status == 200


def test_a_change_made_elsewhere_is_not_undone(emulator, tmp_path):
    """Another node (or a person) changed the client's scopes after this node registered
    its own: this node does not put its set back; its Mounts asking for the old set
    fail naming both sets, and the pods asking for the new set are served."""
    with Provider(emulator, tmp_path, name="n1", args=["--revalidate-interval", "1s"]) as n1:
        files_of(n1.mount("ns", "app", scopes="%s %s" % (A, B)))
        with Provider(emulator, tmp_path, name="n2", seed_file=n1.seed_file) as n2:
            files = files_of(n2.mount("ns", "app", scopes=A))
        assert digdir_scopes(emulator, "app") == [A]
        # n1 notices at its next check, and stops handing out files that say "A B".
        deadline = time.monotonic() + 30 * SLOW
        while True:
            try:
                n1.mount("ns", "app", scopes="%s %s" % (A, B))
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
                assert "changed at DigDir" in e.details(), e.details()
                break
            assert time.monotonic() < deadline, "n1 kept serving the old set"
            time.sleep(0.5)
        # n1 never wrote its set back, and pods asking for the new set get it there too.
        assert digdir_scopes(emulator, "app") == [A]
        assert files_of(n1.mount("ns", "app", scopes=A))["MASKINPORTEN_CLIENT_ID"] == \
            files["MASKINPORTEN_CLIENT_ID"]
