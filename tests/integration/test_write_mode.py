"""Provider write mode (--write-mode provider) under concurrent Mounts of one
target: the driver and the kubelet can call Mount for one pod's volume again
while an earlier call still writes. Every call must succeed and leave exactly
one data directory: no shared temporary names, no stray copies of the key."""

import os

from provider_harness import Provider, attributes, provider_pb2, MOUNT, SLOW

SCOPE = "skatteetaten:testapi"
EXPECTED = {"MASKINPORTEN_CLIENT_ID", "MASKINPORTEN_CLIENT_JWK", "MASKINPORTEN_SCOPES",
            "MASKINPORTEN_WELL_KNOWN_URL", "MASKINPORTEN_ISSUER", "MASKINPORTEN_JWKS_URI",
            "MASKINPORTEN_TOKEN_ENDPOINT", "maskinporten.env"}


def test_120_concurrent_mounts_of_one_target(emulator, tmp_path):
    kubelet = tmp_path / "kubelet"
    target = kubelet / "pods" / "uid-1" / "volumes" / "kubernetes.io~csi" / "mp" / "mount"
    target.mkdir(parents=True)
    args = ["--write-mode", "provider", "--kubelet-dir", str(kubelet)]
    with Provider(emulator, tmp_path, args=args) as p:
        call = p.channel().unary_unary(
            MOUNT, request_serializer=provider_pb2.MountRequest.SerializeToString,
            response_deserializer=provider_pb2.MountResponse.FromString)
        # Alternating modes, so that writes replace each other's sets, not only skip.
        futures = [call.future(provider_pb2.MountRequest(
            attributes=attributes("team-w", "app", pod_name="pod-1", pod_uid="uid-1",
                                  params={"scopes": SCOPE}),
            secrets="null", permission=("420", "416")[i % 2], target_path=str(target)),
            timeout=60 * SLOW) for i in range(120)]
        errors = []
        for f in futures:
            try:
                f.result()
            except Exception as e:  # grpc.RpcError: collect them all, then report
                errors.append("%s: %s" % (e.code(), e.details()))
        assert errors == [], errors[:5]

        names = set(os.listdir(str(target)))
        data_dirs = {n for n in names if n.startswith("..2")}
        assert len(data_dirs) == 1, sorted(names)
        assert os.readlink(str(target / "..data")) in data_dirs
        # No temporary links and nothing but the links of the set besides.
        assert names == EXPECTED | data_dirs | {"..data"}, sorted(names)
        data = target / data_dirs.pop()
        assert set(os.listdir(str(data))) == EXPECTED
        for n in EXPECTED:
            assert os.readlink(str(target / n)) == "..data/" + n
        # One copy of the private key under the target: the one the pod reads.
        copies = [os.path.join(d, f) for d, _, fs in os.walk(str(target)) for f in fs
                  if f == "MASKINPORTEN_CLIENT_JWK" and not os.path.islink(os.path.join(d, f))]
        assert len(copies) == 1, copies
