"""`kubectl breakglass audit verify`: the audit file's hash chain and HMACs, and its tail against the
chain head the operator publishes in the cluster; every check not made is said as a WARNING."""

from __future__ import annotations

import os
import sys

from .. import api
from .errors import NOT_FOUND, NOT_OK, OK, USAGE, CliError


def cmd_audit_verify(args, client_factory=None) -> int:
    """Verify the chain and HMACs of FILE and, when the cluster answers, its tail against the head the
    operator publishes (ConfigMap breakglass-audit-head): a truncated tail or a re-sealed rewrite is a
    break (exit 1). Unreachable cluster: chain (and HMAC, if a key is given) only, with a WARNING."""
    from ..audit_chain import chain_report, compare_head

    given = args.hmac_secret or os.environ.get("BREAKGLASS_AUDIT_HMAC_SECRET")
    key = given.encode() if given else None
    key_from = ("--hmac-secret" if args.hmac_secret else "$BREAKGLASS_AUDIT_HMAC_SECRET") if given else None
    try:
        fh = open(args.file, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}", USAGE) from None
    with fh:
        # The head is read BEFORE the file: the operator writes a record to its file before it publishes
        # the head, so a file read after its head is never behind it unless records were cut off.
        head, head_problem, warnings = None, None, []
        if getattr(args, "offline", False) or client_factory is None:
            warnings.append("--offline: the cluster was not asked")
        else:
            head, head_problem, key, key_from = _audit_anchor(args, client_factory, key, key_from, warnings)
        rep = chain_report(fh, key, at_seq=head["seq"] if head else None, segment=args.segment)
    broken = compare_head(rep, head) if head else rep.broken
    anchor = f"{args.operator_namespace}/{api.AUDIT_HEAD_CONFIGMAP}"

    span = (
        f"seq {rep.first_seq}..{rep.last_seq} ({rep.count} record(s)), last hash {rep.last_hash}"
        if rep.last_seq is not None
        else f"{rep.count} record(s)"
    )
    print(f"file:    {args.file}: {span}")
    if head:
        print(
            f"cluster: {anchor}: head seq {head['seq']} hash {head['hash']}"
            + (f" (published {head['time']})" if head.get("time") else "")
        )
    print("HMAC:    " + (f"checked with the key from {key_from}" if key else "NOT checked (no key)"))
    if args.segment and rep.first_seq:
        warnings.append(
            f"--segment: the file starts at seq {rep.first_seq}; the {rep.first_seq} earlier "
            "record(s) are not in it and were not checked"
        )
    if head and not broken and rep.last_seq is not None and rep.last_seq > head["seq"]:
        warnings.append(
            f"{rep.last_seq - head['seq']} record(s) after the published head (seq {head['seq']}) are "
            "not covered by it yet (the operator may have failed to publish them)"
        )
    if head is None and head_problem is None and not broken:
        warnings.append(
            "the tail was NOT checked against the cluster: a truncated or re-sealed log would pass "
            "this check; chain only"
        )
    if key is None and not broken:
        warnings.append(
            "HMAC NOT checked: without the key a rewrite that recomputes every hash is caught only by "
            "the cluster's head" + ("" if head else ", which was not checked either")
        )
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    if head_problem:
        print(f"BROKEN: {head_problem}")
        return NOT_OK
    if broken:
        before = (
            f"{rep.count} record(s) before it verified"
            if broken is rep.broken
            else f"all {rep.count} record(s) in the file verify on their own"
        )
        print(f"BROKEN at line {broken.line} (seq {broken.seq}): {broken.problem}; {before}")
        return NOT_OK
    print(
        f"OK: {rep.count} record(s), chain intact"
        + (" and HMACs verified" if key else "")
        + (f"; tail matches the cluster's head (seq {head['seq']})" if head else "; tail NOT checked")
    )
    return OK


def _audit_anchor(args, client_factory, key, key_from, warnings):
    """(head or None, problem or None, key, key_from): the published head and, when no key was given,
    the operator's HMAC key from its Secret. Every way this can fail is said, never swallowed."""
    from ..audit_chain import parse_head
    from ..audit_head import hmac_key_from_secret

    head_name, secret_name = api.AUDIT_HEAD_CONFIGMAP, args.hmac_secret_name
    ns = args.operator_namespace
    try:
        client = client_factory()
        cm = client.get_configmap(ns, head_name)
    except CliError as exc:
        if exc.code == NOT_FOUND:
            warnings.append(
                f"no audit head published in {ns}/{head_name} (operator not running there, or "
                "--operator-namespace is wrong)"
            )
        elif exc.code == NOT_OK:
            warnings.append(f"not allowed to read ConfigMap {ns}/{head_name}: {exc}")
        else:
            warnings.append(f"cannot reach the cluster ({exc})")
        return None, None, key, key_from
    except Exception as exc:  # urllib3 connection errors are not OSErrors
        warnings.append(f"cannot reach the cluster ({type(exc).__name__}: {exc})")
        return None, None, key, key_from
    head, problem = None, None
    raw = (cm.get("data") or {}).get("head.json")
    if raw is None:
        warnings.append(f"ConfigMap {ns}/{head_name} has no head.json")
    else:
        try:
            head = parse_head(raw)
        except ValueError as exc:
            problem = f"the cluster's audit head {ns}/{head_name} is malformed ({exc}); cannot vouch for the file"
    if key is None:
        try:
            key = hmac_key_from_secret(client.get_secret(ns, secret_name), f"{ns}/{secret_name}")
            key_from = f"Secret {ns}/{secret_name}"
        except CliError as exc:
            why = (
                "not allowed to read it"
                if exc.code == NOT_OK
                else "it does not exist"
                if exc.code == NOT_FOUND
                else str(exc)
            )
            warnings.append(f"HMAC key: Secret {ns}/{secret_name}: {why}; pass --hmac-secret to check HMACs")
        except ValueError as exc:
            warnings.append(f"HMAC key: {exc}")
        except Exception as exc:
            warnings.append(f"HMAC key: cannot read Secret {ns}/{secret_name} ({type(exc).__name__}: {exc})")
    return head, problem, key, key_from
