"""`kubectl breakglass` (placeholder; grows in the packaging issue)."""
from __future__ import annotations

import sys

USAGE = """usage: kubectl breakglass <command> [...]

commands:
  request   file a BreakGlassRequest
  approve   approve a request
  deny      deny a request
  review    close an emergency review
  revoke    revoke a grant
  list      list requests
  status    show one request
  token     print the token / kubeconfig of an issued grant
  verify    verify a token
  audit     verify an audit log
  explain   simulate a request against the policies
"""


def main(argv: list[str] | None = None) -> int:
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
