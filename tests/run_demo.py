"""`make run`: the whole product on the embedded default, step by step.

Starts the DigDir + Maskinporten emulator and the provider on a socket under
the build directory, mounts as a sample pod the way the CSI driver would,
gets an access token with the mounted files, prints each step, and keeps
serving until Ctrl-C. Nothing secret is printed: file names, not contents;
the token's claims, not the token.
"""

import argparse
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "emulator"))
sys.path.insert(0, os.path.join(HERE, "integration"))

from harness import Emulator  # noqa: E402

BIN = os.environ.get("MCP_BIN") or os.path.join(os.path.dirname(HERE), "build",
                                                "maskinporten-csi-provider")


def step(n, text):
    print("\n\033[1m[%d] %s\033[0m" % (n, text), flush=True)


def run(args):
    print("$ maskinporten-csi-provider " + " ".join(args[1:]), flush=True)
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = r.stdout.rstrip()
    if r.returncode != 0:
        print(out)
        sys.exit("step failed (exit %d)" % r.returncode)
    return out


def claims_of(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--once", action="store_true", help="exit after the demo (no serving)")
    opts = ap.parse_args()
    os.makedirs(opts.dir, exist_ok=True)

    step(1, "Starting the DigDir + Maskinporten emulator (HTTPS, its own CA)")
    emu = Emulator(os.path.join(opts.dir, "emulator")).start()
    info = emu.info
    print("  Maskinporten metadata  %s" % info["well_known_url"])
    print("  DigDir admin API       %s/api/v1" % info["digdir_url"])
    print("  admin client           %s (organisation %s, business certificate in x5c)"
          % (info["admin_client_id"], info["org_number"]))
    print("  scopes the organisation may consume: skatteetaten:testapi, nav:test/api, ks:fiks")

    seed = os.path.join(opts.dir, "seed")
    if not os.path.exists(seed):
        fd = os.open(seed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(64))
    sock = os.path.join(opts.dir, "maskinporten.sock")
    upstream = ["--cluster-name", "local", "--digdir-url", info["digdir_url"],
                "--well-known-url", info["well_known_url"],
                "--admin-client-id", info["admin_client_id"],
                "--admin-key-file", info["admin_key_file"],
                "--admin-cert-file", info["admin_cert_file"], "--ca-file", info["ca_file"],
                "--seed-file", seed, "--scope-prefix", "test"]

    step(2, "Starting the provider: serve on unix:%s" % sock)
    log_path = os.path.join(opts.dir, "provider.log")
    log = open(log_path, "w")
    serve = subprocess.Popen([BIN, "serve", "--socket", sock, "--log-format", "text",
                              "--metrics-addr", "127.0.0.1:0"] + upstream,
                             stdout=log, stderr=log)
    deadline = time.time() + 15
    while not os.path.exists(sock):
        if serve.poll() is not None or time.time() > deadline:
            print(open(log_path).read())
            emu.stop()
            sys.exit("the provider did not start")
        time.sleep(0.05)
    print("  log: %s" % log_path)

    pod_dir = os.path.join(opts.dir, "pod", "var", "run", "secrets", "nais.io", "maskinporten")
    os.makedirs(pod_dir, exist_ok=True)
    try:
        step(3, "Mounting as the CSI driver would, for pod demo/sample-app "
                "(service account sample-app, scopes skatteetaten:testapi)")
        print(run([BIN, "mount", "--socket", sock, "--namespace", "demo",
                   "--service-account", "sample-app", "--pod-name", "sample-app-5d8f",
                   "--scopes", "skatteetaten:testapi", "--dir", pod_dir]))
        clients = [c for c in emu.clients() if c["description"] == "local:demo:sample-app"]
        print("  DigDir now has client %s, description %s, %d keys registered"
              % (clients[0]["client_id"], clients[0]["description"],
                 len(emu.client(clients[0]["client_id"])["keys"])))

        step(4, "Mounting again (another pod of the same app): answered from memory")
        before = emu.counts()
        print(run([BIN, "mount", "--socket", sock, "--namespace", "demo",
                   "--service-account", "sample-app", "--pod-name", "sample-app-9c2a",
                   "--scopes", "skatteetaten:testapi",
                   "--dir", os.path.join(opts.dir, "pod2")]))
        print("  requests to DigDir and Maskinporten for this Mount: %d"
              % (sum(emu.counts().values()) - sum(before.values())))

        step(5, "The app's view: a token from Maskinporten with the mounted files")
        answer = json.loads(run([BIN, "token", "--dir", pod_dir, "--json",
                                 "--ca-file", info["ca_file"]]))
        token = answer["access_token"]
        print("  access token: %s... (%d bytes, expires in %s s)"
              % (token[:12], len(token), answer.get("expires_in")))
        print("  claims: %s" % json.dumps({k: v for k, v in claims_of(token).items()
                                           if k in ("iss", "client_id", "scope", "consumer")}))
    except SystemExit:
        serve.terminate()
        serve.wait()
        emu.stop()
        raise

    if opts.once:
        serve.terminate()
        serve.wait()
        emu.stop()
        return
    step(6, "Serving on unix:%s until Ctrl-C (try: %s mount --socket %s --namespace demo "
            "--service-account other --scopes nav:test/api --dir /tmp/x)" % (sock, BIN, sock))
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        serve.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait()
        emu.stop()
        print("\nstopped (provider exit %s)" % serve.returncode)


if __name__ == "__main__":
    main()
