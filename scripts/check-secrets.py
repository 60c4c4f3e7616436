#!/usr/bin/env python3
"""The secret-leak check over the output of a whole test run.

scripts/test.sh runs the tests with SCAN_GATEWAY_TEST_LOG_DIR set: every gateway and simulator
the integration tests start logs there at debug level, span fields included, and cargo's own
output is saved there too. This searches all of it for what must never be written anywhere:
the client secrets the tests use, private keys, JWTs (client assertions, federated tokens,
callers' bearer tokens), the simulator's access tokens and Authorization headers.

Usage: check-secrets.py DIR   (exit 1 and the places, redacted, when something is found)
"""

import pathlib
import re
import sys

# The client secrets the tests configure (the simulator's default, the canary of the leak test,
# the wrong secret of the refused-credentials test).
LITERALS = ["simulator-secret", "CANARY-secret-9f8e7d6c5b4a", "wrong-secret-value-123"]

PATTERNS = {
    "client secret": re.compile("|".join(re.escape(s) for s in LITERALS)),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|MII[A-Za-z0-9+/]{60,}"),
    # A JWT: base64url JSON header and payload (both start with `{"` = eyJ).
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}"),
    "access token": re.compile(r"sim\.[0-9a-f]{64}"),
    "authorization header": re.compile(r"Bearer [A-Za-z0-9._~+/-]{8,}"),
    "form-encoded secret": re.compile(r"client_secret=[^&\s\"]+|client_assertion=[^&\s\"]+"),
}


# One sample per pattern: the check refuses to run with a pattern that finds nothing.
SAMPLES = {
    "client secret": "secret=simulator-secret",
    "private key": "-----BEGIN PRIVATE KEY-----",
    "JWT": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.sig",
    "access token": "sim." + "ab" * 32,
    "authorization header": "authorization: Bearer abcdefgh12345678",
    "form-encoded secret": "grant_type=client_credentials&client_secret=s3cr3t",
}
# Proof that the run logged the flows that handle secrets (else the check proves nothing).
EVIDENCE = "fetched an access token"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    for kind, pattern in PATTERNS.items():
        assert pattern.search(SAMPLES[kind]), f"the {kind} pattern misses its sample"
    root = pathlib.Path(sys.argv[1])
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        print(f"check-secrets: nothing to check in {root}", file=sys.stderr)
        return 1
    lines = 0
    evidence = 0
    found = []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                lines += 1
                evidence += EVIDENCE in line
                for kind, pattern in PATTERNS.items():
                    match = pattern.search(line)
                    if match:
                        start = max(match.start() - 40, 0)
                        context = line[start : match.start()] + f"<{kind}>"
                        found.append(f"{path}:{number}: {kind}: ...{context.strip()}")
    size = sum(p.stat().st_size for p in files) // 1024
    if found:
        print(f"check-secrets: {len(found)} leak(s) in {len(files)} files ({size} KiB):")
        for place in found[:50]:
            print(f"  {place}")
        return 1
    if evidence == 0:
        print(f"check-secrets: no line says '{EVIDENCE}': were the logs written?")
        return 1
    print(
        f"check-secrets: no secret in {lines} lines of {len(files)} files ({size} KiB); "
        f"{evidence} token fetches logged"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
