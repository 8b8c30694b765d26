#!/usr/bin/env python3
"""Docker HEALTHCHECK of Cairn's images: GET a URL from inside the container, exit 0 if it answers 200.

    healthcheck.py URL [--expect TEXT]

`$NAME` and `${NAME}` in URL are replaced from the environment (exec-form HEALTHCHECKs get no shell),
so the Dockerfile and the entrypoint read the port from the same variable. With --expect, the body must
also contain TEXT (a metric name, say), so an unrelated server on the port does not pass. Uses only the
standard library: the slim images have no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 5.0
MAX_BODY_BYTES = 4 << 20


def check(url: str, expect: str | None = None, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    """(healthy, reason) for one GET of `url`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
            body = response.read(MAX_BODY_BYTES).decode("utf-8", "replace") if expect else ""
    except urllib.error.HTTPError as error:
        return False, f"{url}: HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return False, f"{url}: {getattr(error, 'reason', error)}"
    if status != 200:
        return False, f"{url}: HTTP {status}"
    if expect and expect not in body:
        return False, f"{url}: answered 200 without {expect!r}"
    return True, f"{url}: ok"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    expect = None
    if "--expect" in args:
        index = args.index("--expect")
        if index + 1 >= len(args):
            print("usage: healthcheck.py URL [--expect TEXT]", file=sys.stderr)
            return 2
        expect = args[index + 1]
        del args[index:index + 2]
    if len(args) != 1:
        print("usage: healthcheck.py URL [--expect TEXT]", file=sys.stderr)
        return 2
    url = os.path.expandvars(args[0])
    if "$" in url:
        print(f"unset variable in {url}", file=sys.stderr)
        return 2
    healthy, reason = check(url, expect)
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
