"""`kubectl breakglass`: request, approve, deny, review, revoke, list, status, token, verify, audit, explain.

Exit codes: 0 ok; 1 the thing asked about is not ok (rejected, invalid token, broken audit chain,
explain says it would be rejected); 2 usage error; 3 cluster/API error; 4 not found; 5 timed out.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import ssl
import sys
import time
import urllib.request
from typing import Any

import yaml

from .. import api
from ..domain.durations import DurationError, format_duration, parse_duration, parse_rfc3339, utcnow
from ..tls import write_private

OK, NOT_OK, USAGE, API_ERROR, NOT_FOUND, TIMEOUT = 0, 1, 2, 3, 4, 5


class CliError(Exception):
    def __init__(self, message: str, code: int = API_ERROR):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- cluster access
class Client:
    def __init__(self, args):
        import kubernetes
        from kubernetes.client.rest import ApiException
        self.ApiException = ApiException
        try:
            cfg = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(config_file=args.kubeconfig, context=args.context,
                                               client_configuration=cfg)
            contexts, current = kubernetes.config.list_kube_config_contexts(config_file=args.kubeconfig)
        except Exception as exc:
            raise CliError(f"cannot load kubeconfig: {exc}", API_ERROR) from None
        ctx = current if not args.context else next((c for c in contexts if c["name"] == args.context), current)
        self.namespace = args.namespace or (ctx.get("context") or {}).get("namespace") or "default"
        self.api = kubernetes.client.ApiClient(cfg)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)

    def _call(self, fn, *a, what: str = "", **kw):
        try:
            return fn(*a, **kw)
        except self.ApiException as exc:
            try:
                message = json.loads(exc.body).get("message", exc.reason)
            except Exception:
                message = exc.reason
            if exc.status == 404:
                raise CliError(f"{what or 'object'} not found" + (f": {message}" if not what else ""), NOT_FOUND) from None
            if exc.status == 403 and "admission webhook" not in message:
                raise CliError(f"not allowed: {message}", NOT_OK) from None
            if exc.status in (400, 403, 422):
                raise CliError(f"rejected: {message}", NOT_OK) from None
            raise CliError(f"API error {exc.status}: {message}", API_ERROR) from None
        except OSError as exc:
            raise CliError(f"cannot reach the API server: {exc}", API_ERROR) from None

    def get_request(self, name):
        return self._call(self.custom.get_namespaced_custom_object, api.GROUP, api.VERSION, self.namespace,
                          api.REQUEST_PLURAL, name, what=f"BreakGlassRequest {self.namespace}/{name}")

    def list_requests(self, all_namespaces=False):
        if all_namespaces:
            return self._call(self.custom.list_cluster_custom_object, api.GROUP, api.VERSION,
                              api.REQUEST_PLURAL)["items"]
        return self._call(self.custom.list_namespaced_custom_object, api.GROUP, api.VERSION, self.namespace,
                          api.REQUEST_PLURAL)["items"]

    def create(self, plural, body):
        return self._call(self.custom.create_namespaced_custom_object, api.GROUP, api.VERSION, self.namespace,
                          plural, body)

    def get_policy(self, name):
        return self._call(self.custom.get_cluster_custom_object, api.GROUP, api.VERSION, api.POLICY_PLURAL, name,
                          what=f"BreakGlassPolicy {name}")

    def list_policies(self):
        return self._call(self.custom.list_cluster_custom_object, api.GROUP, api.VERSION, api.POLICY_PLURAL)["items"]

    def get_secret(self, namespace, name):
        s = self._call(self.core.read_namespaced_secret, name, namespace, what=f"Secret {namespace}/{name}")
        return self.api.sanitize_for_serialization(s)

    def get_configmap(self, namespace, name):
        cm = self._call(self.core.read_namespaced_config_map, name, namespace, what=f"ConfigMap {namespace}/{name}")
        return self.api.sanitize_for_serialization(cm)



# ---------------------------------------------------------------- output
def emit(args, data, table):
    if args.output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    elif args.output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        table()


def _expires_in(status, now):
    if not status.get("expiresAt"):
        return "-"
    left = (parse_rfc3339(status["expiresAt"]) - now).total_seconds()
    if status.get("phase") != api.ACTIVE:
        return "-"
    return format_duration(dt.timedelta(seconds=max(0, int(left)))) if left > 0 else "expired"


def _approvals_text(req, policies):
    pol = policies.get((req.get("spec") or {}).get("policy"), {})
    need = (pol.get("spec") or {}).get("requiredApprovals", 1)
    got = len([a for a in (req.get("status") or {}).get("approvals") or [] if a.get("decision") == "Approve"])
    return f"{got}/{need}"


def print_table(rows, headers):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    for row in [headers] + rows:
        print("   ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


# ---------------------------------------------------------------- commands
def cmd_request(args, client: Client):
    for d in filter(None, [args.duration]):
        try:
            parse_duration(d)
        except DurationError as exc:
            raise CliError(f"--duration: {exc}", USAGE) from None
    name = args.name or f"{args.policy}-{time.strftime('%Y%m%d%H%M%S')}"
    spec: dict[str, Any] = {"policy": args.policy, "reason": args.reason}
    for key, value in (("ticket", args.ticket), ("duration", args.duration)):
        if value:
            spec[key] = value
    if args.namespace_access:
        spec["namespaces"] = args.namespace_access
    if args.role:
        spec["clusterRoles"] = args.role
    if args.scope:
        spec["scopes"] = args.scope
    if args.audience:
        spec["audiences"] = args.audience
    if args.emergency:
        spec["emergency"] = True
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND_REQUEST,
            "metadata": {"name": name, "namespace": client.namespace}, "spec": spec}
    created = client.create(api.REQUEST_PLURAL, body)
    print(f"breakglassrequest {client.namespace}/{created['metadata']['name']} created", file=sys.stderr)
    if not args.wait:
        print(created["metadata"]["name"])
        return OK
    return _wait_issued(args, client, created["metadata"]["name"])


def _wait_issued(args, client, name):
    deadline = time.monotonic() + args.timeout
    last = None
    while time.monotonic() < deadline:
        req = client.get_request(name)
        status = req.get("status") or {}
        phase = status.get("phase")
        if phase != last:
            print(f"phase: {phase or 'Pending'}" + (f" ({status.get('message')})" if status.get("message") else ""),
                  file=sys.stderr)
            last = phase
        if phase == api.ACTIVE and status.get("secretRef"):
            print(f"{status['secretRef']['namespace']}/{status['secretRef']['name']}")
            return OK
        if phase in api.TERMINAL_PHASES:
            print(f"request {name} ended {phase}: {status.get('message', '')}", file=sys.stderr)
            return NOT_OK
        time.sleep(0.5)
    print(f"timed out after {args.timeout}s waiting for {name} to be issued", file=sys.stderr)
    return TIMEOUT


def _decide(args, client, decision):
    client.get_request(args.name)  # a clear "not found" before admission says it
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND_APPROVAL,
            "metadata": {"generateName": f"{args.name}-", "namespace": client.namespace},
            "spec": {"request": args.name, "decision": decision}}
    if getattr(args, "comment", None):
        body["spec"]["comment"] = args.comment
    created = client.create(api.APPROVAL_PLURAL, body)
    print(f"{decision.lower()} recorded for {client.namespace}/{args.name} "
          f"(breakglassapproval {created['metadata']['name']}, approver {created['spec'].get('approver')})")
    return OK


def cmd_approve(args, client):
    return _decide(args, client, "Approve")


def cmd_deny(args, client):
    return _decide(args, client, "Deny")


def cmd_review(args, client):
    return _decide(args, client, "Review")


def cmd_revoke(args, client):
    client.get_request(args.name)
    client._call(client.custom.patch_namespaced_custom_object, api.GROUP, api.VERSION, client.namespace,
                 api.REQUEST_PLURAL, args.name, {"spec": {"revoked": True}})
    print(f"breakglassrequest {client.namespace}/{args.name} revoked")
    return OK


def cmd_list(args, client):
    reqs = client.list_requests(args.all_namespaces)
    policies = {p["metadata"]["name"]: p for p in _try(client.list_policies, [])}
    now = utcnow()
    rows = [[r["metadata"]["namespace"], r["metadata"]["name"], (r.get("status") or {}).get("phase", "Pending"),
             r["spec"].get("requester", ""), r["spec"].get("policy", ""), _approvals_text(r, policies),
             _expires_in(r.get("status") or {}, now)] for r in reqs]
    emit(args, reqs, lambda: print_table(rows, ["NAMESPACE", "NAME", "PHASE", "REQUESTER", "POLICY", "APPROVALS",
                                               "EXPIRES IN"]))
    return OK


def cmd_status(args, client):
    req = client.get_request(args.name)
    policies = {p["metadata"]["name"]: p for p in _try(client.list_policies, [])}
    st, spec = req.get("status") or {}, req["spec"]

    def table():
        print_table([[req["metadata"]["name"], st.get("phase", "Pending"), spec.get("requester", ""),
                      spec.get("policy", ""), _approvals_text(req, policies), _expires_in(st, utcnow())]],
                    ["NAME", "PHASE", "REQUESTER", "POLICY", "APPROVALS", "EXPIRES IN"])
        print(f"\nreason:   {spec.get('reason')}")
        print(f"grant:    roles {spec.get('clusterRoles', [])} in {spec.get('namespaces', [])}; "
              f"scopes {spec.get('scopes', [])}")
        if st.get("message"):
            print(f"message:  {st['message']}")
        for a in st.get("approvals") or []:
            print(f"approval: {a.get('decision')} by {a.get('approver')} at {a.get('time')} {a.get('comment', '')}")
        if st.get("secretRef"):
            print(f"secret:   {st['secretRef']['namespace']}/{st['secretRef']['name']} (jti {st.get('tokenId')})")
        if st.get("review"):
            print(f"review:   {st['review']}")
        for c in st.get("conditions") or []:
            print(f"condition {c['type']}={c['status']} ({c.get('reason')}): {c.get('message')}")
    emit(args, req, table)
    return OK


def cmd_token(args, client):
    req = client.get_request(args.name)
    st = req.get("status") or {}
    if st.get("phase") != api.ACTIVE or not st.get("secretRef"):
        raise CliError(f"request {args.name} is {st.get('phase', 'Pending')}: no token to show", NOT_OK)
    secret = client.get_secret(st["secretRef"]["namespace"], st["secretRef"]["name"])
    data = secret.get("data") or {}
    if args.kubeconfig_out:
        if "kubeconfig" not in data:
            raise CliError("the token Secret has no kubeconfig (operator runs without --cluster-server)", NOT_OK)
        write_private(args.kubeconfig_out, base64.b64decode(data["kubeconfig"]))
        print(f"kubeconfig written to {args.kubeconfig_out} (expires {st.get('expiresAt')})", file=sys.stderr)
        return OK
    sys.stdout.write(base64.b64decode(data["token"]).decode() + "\n")
    return OK


# ---------------------------------------------------------------- verify
def _fetch_json(url, ca_file=None, insecure=False):
    ctx = ssl.create_default_context(cafile=ca_file)
    if insecure:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            return json.load(r)
    except Exception as exc:
        raise CliError(f"cannot fetch {url}: {exc}", API_ERROR) from None


def cmd_verify(args, client_factory):
    from ..tokens.jwt_tokens import unverified_claims, verify
    token = args.token
    client = None
    if args.secret:
        ns, _, name = args.secret.partition("/")
        if not name:
            raise CliError("--secret takes NAMESPACE/NAME", USAGE)
        client = client_factory()
        token = base64.b64decode(client.get_secret(ns, name)["data"]["token"]).decode()
    if token == "-":
        token = sys.stdin.read().strip()
    if not token:
        raise CliError("give a TOKEN, '-' for stdin, or --secret NS/NAME", USAGE)
    issuer = args.issuer
    revoked: set[str] = set()
    if args.jwks:
        jwks = _fetch_json(args.jwks, args.ca_file, args.insecure_skip_tls_verify)
        base = args.jwks.rsplit("/openid/v1/jwks", 1)[0]
        if issuer is None and args.jwks.endswith("/openid/v1/jwks"):
            issuer = base
        try:
            revoked = {e["jti"] for e in _fetch_json(f"{base}/revocations", args.ca_file, args.insecure_skip_tls_verify)}
        except CliError:
            print("warning: revocation list not reachable; revocation not checked", file=sys.stderr)
    else:  # --from-cluster (default)
        client = client or client_factory()
        cm = client.get_configmap(args.operator_namespace, api.JWKS_CONFIGMAP)
        jwks = json.loads(cm["data"]["jwks.json"])
        rcm = _try(lambda: client.get_configmap(args.operator_namespace, api.REVOCATIONS_CONFIGMAP), None)
        revoked = {e["jti"] for e in json.loads(((rcm or {}).get("data") or {}).get("revocations.json", "[]"))}
    result = verify(token, jwks=jwks, issuer=issuer, audience=args.audience, revoked_jtis=revoked)
    claims = result.claims
    if claims is None:
        try:
            claims = unverified_claims(token)
        except Exception:
            claims = None
    out = {"valid": result.ok, "reason": result.reason, "message": result.message, "kid": result.kid,
           "claims": claims}
    if claims and "exp" in claims:
        out["remaining"] = format_duration(dt.timedelta(seconds=max(0, int(claims["exp"] - time.time()))))
    if args.output in ("json", "yaml"):
        emit(args, out, lambda: None)
    else:
        print(f"{'VALID' if result.ok else 'INVALID'}: {result.reason}: {result.message}")
        if claims:
            bg = claims.get("breakglass") or {}
            print(f"subject:   {claims.get('sub')}   request: {bg.get('request')}   policy: {bg.get('policy')}")
            print(f"scope:     {claims.get('scope')}")
            print(f"audience:  {claims.get('aud')}   issuer: {claims.get('iss')}   kid: {result.kid}")
            print(f"jti:       {claims.get('jti')}   remaining: {out.get('remaining', '-')}")
    del token
    return OK if result.ok else NOT_OK


# ---------------------------------------------------------------- audit
def cmd_audit_verify(args, client_factory=None) -> int:
    """Verify the chain and HMACs of FILE and, when the cluster answers, its tail against the head the
    operator publishes (ConfigMap breakglass-audit-head): a truncated tail or a re-sealed rewrite is a
    break (exit 1). Unreachable cluster: chain (and HMAC, if a key is given) only, with a WARNING."""
    from ..audit import chain_report, compare_head

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

    span = (f"seq {rep.first_seq}..{rep.last_seq} ({rep.count} record(s)), last hash {rep.last_hash}"
            if rep.last_seq is not None else f"{rep.count} record(s)")
    print(f"file:    {args.file}: {span}")
    if head:
        print(f"cluster: {anchor}: head seq {head['seq']} hash {head['hash']}"
              + (f" (published {head['time']})" if head.get("time") else ""))
    print("HMAC:    " + (f"checked with the key from {key_from}" if key else "NOT checked (no key)"))
    if args.segment and rep.first_seq:
        warnings.append(f"--segment: the file starts at seq {rep.first_seq}; the {rep.first_seq} earlier "
                        "record(s) are not in it and were not checked")
    if head and not broken and rep.last_seq is not None and rep.last_seq > head["seq"]:
        warnings.append(f"{rep.last_seq - head['seq']} record(s) after the published head (seq {head['seq']}) are "
                        "not covered by it yet (the operator may have failed to publish them)")
    if head is None and head_problem is None and not broken:
        warnings.append("the tail was NOT checked against the cluster: a truncated or re-sealed log would pass "
                        "this check; chain only")
    if key is None and not broken:
        warnings.append("HMAC NOT checked: without the key a rewrite that recomputes every hash is caught only by "
                        "the cluster's head" + ("" if head else ", which was not checked either"))
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    if head_problem:
        print(f"BROKEN: {head_problem}")
        return NOT_OK
    if broken:
        before = f"{rep.count} record(s) before it verified" if broken is rep.broken else \
            f"all {rep.count} record(s) in the file verify on their own"
        print(f"BROKEN at line {broken.line} (seq {broken.seq}): {broken.problem}; {before}")
        return NOT_OK
    print(f"OK: {rep.count} record(s), chain intact" + (" and HMACs verified" if key else "")
          + (f"; tail matches the cluster's head (seq {head['seq']})" if head else "; tail NOT checked"))
    return OK


def _audit_anchor(args, client_factory, key, key_from, warnings):
    """(head or None, problem or None, key, key_from): the published head and, when no key was given,
    the operator's HMAC key from its Secret. Every way this can fail is said, never swallowed."""
    from ..audit import hmac_key_from_secret, parse_head
    head_name, secret_name = api.AUDIT_HEAD_CONFIGMAP, args.hmac_secret_name
    ns = args.operator_namespace
    try:
        client = client_factory()
        cm = client.get_configmap(ns, head_name)
    except CliError as exc:
        if exc.code == NOT_FOUND:
            warnings.append(f"no audit head published in {ns}/{head_name} (operator not running there, or "
                            "--operator-namespace is wrong)")
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
            why = "not allowed to read it" if exc.code == NOT_OK else \
                "it does not exist" if exc.code == NOT_FOUND else str(exc)
            warnings.append(f"HMAC key: Secret {ns}/{secret_name}: {why}; pass --hmac-secret to check HMACs")
        except ValueError as exc:
            warnings.append(f"HMAC key: {exc}")
        except Exception as exc:
            warnings.append(f"HMAC key: cannot read Secret {ns}/{secret_name} ({type(exc).__name__}: {exc})")
    return head, problem, key, key_from


# ---------------------------------------------------------------- explain
def cmd_explain(args, client):
    from ..domain.policy import Policy, RequestView, effective_duration, evaluate_request, validate_policy
    try:
        with (sys.stdin if args.filename == "-" else open(args.filename)) as fh:
            body = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {args.filename}: {exc}", USAGE) from None
    if not isinstance(body, dict) or body.get("kind") != api.KIND_REQUEST:
        raise CliError(f"{args.filename} is not a BreakGlassRequest", USAGE)
    user, groups = args.as_user, args.as_group
    if not user:
        user, groups = _whoami(client)
    spec = dict(body.get("spec") or {})
    meta = dict(body.get("metadata") or {})
    meta.setdefault("namespace", client.namespace)
    spec.update(requester=user, requesterGroups=groups)
    verdicts: list[tuple[str, bool, str]] = []
    name = spec.get("policy") or ""
    pol_body = _try(lambda: client.get_policy(name), None)
    if pol_body is None:
        verdicts.append(("policy", False, f"spec.policy {name!r}: no BreakGlassPolicy of that name exists"))
        policy = None
    else:
        policy = Policy.from_resource(name, pol_body.get("spec"))
        problems = validate_policy(policy)
        verdicts.append(("policy", not problems, problems[0].message if problems else f"policy {name!r} is Ready"))
        view = RequestView.from_resource({"metadata": meta, "spec": spec})
        for v in evaluate_request(view, policy):
            verdicts.append((v.rule, v.ok, v.message))
    ok = all(v[1] for v in verdicts)
    info: dict[str, Any] = {"requester": user, "groups": groups}
    if policy is not None:
        view = RequestView.from_resource({"metadata": meta, "spec": spec})
        if view.emergency and policy.emergency_allowed:
            approval = "emergency: issued at once, review required within " + policy.emergency_review_within
        elif policy.required_approvals == 0:
            approval = "no approval required: issued at once"
        elif policy.auto_approves(groups):
            approval = "auto-approved (autoApprove group): issued at once"
        else:
            approval = (f"needs {policy.required_approvals} approval(s) from users {list(policy.approver_users)} / "
                        f"groups {list(policy.approver_groups)}"
                        + ("" if policy.allow_self_approval else f"; {user} may not approve it"))
        info["approval"] = approval
        try:
            info["duration"] = format_duration(effective_duration(view, policy))
        except DurationError:
            pass
    result = {"allowed": ok, "checks": [{"rule": r, "ok": o, "message": m} for r, o, m in verdicts], **info}

    def table():
        for rule, good, message in verdicts:
            print(f"{'PASS' if good else 'FAIL'}  {rule:<13} {message}")
        print(f"\nrequester: {user} {groups}")
        if "approval" in info:
            print(f"approval:  {info['approval']}")
        if "duration" in info:
            print(f"duration:  {info['duration']}")
        print(f"\nverdict:   {'would be admitted' if ok else 'would be REJECTED'}")
    emit(args, result, table)
    return OK if ok else NOT_OK


def _whoami(client) -> tuple[str, list[str]]:
    """Ask the API server who we are: a server-side dry-run create is stamped by the mutating webhook."""
    policies = _try(client.list_policies, [])
    probe = {"apiVersion": api.API_VERSION, "kind": api.KIND_REQUEST,
             "metadata": {"generateName": "explain-", "namespace": client.namespace,
                          "labels": {api.IDENTITY_PROBE_LABEL: "true"}},
             "spec": {"policy": (policies[0]["metadata"]["name"] if policies else "x"),
                      "reason": "explain: identity probe (dry run)"}}
    try:
        created = client.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, client.namespace, api.REQUEST_PLURAL, probe, dry_run="All")
        return created["spec"]["requester"], created["spec"].get("requesterGroups", [])
    except client.ApiException as exc:
        raise CliError("cannot determine who you are (pass --as-user/--as-group): "
                       f"{json.loads(exc.body).get('message', exc.reason) if exc.body else exc.reason}", API_ERROR) \
            from None


def _try(fn, default):
    try:
        return fn()
    except CliError:
        return default


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    def common_options(suppress: bool) -> argparse.ArgumentParser:
        # Sub-commands use SUPPRESS so `kubectl breakglass -n x list` keeps the top-level value.
        d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
        c = argparse.ArgumentParser(add_help=False)
        c.add_argument("--kubeconfig", default=d(None), help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
        c.add_argument("--context", default=d(None), help="kubeconfig context")
        c.add_argument("-n", "--namespace", default=d(None), help="namespace of the request (default: context's)")
        c.add_argument("-o", "--output", choices=["table", "json", "yaml"], default=d("table"), help="output format")
        return c
    common = common_options(True)
    p = argparse.ArgumentParser(prog="kubectl breakglass", description="Break-glass access from kubectl.",
                                parents=[common_options(False)])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("request", parents=[common], help="file a BreakGlassRequest")
    r.add_argument("--policy", required=True)
    r.add_argument("--reason", required=True)
    r.add_argument("--ticket")
    r.add_argument("--duration", help="e.g. 30m, 1h")
    r.add_argument("--namespace-access", nargs="+", default=[], metavar="NS", help="namespaces to grant access in")
    r.add_argument("--role", nargs="+", default=[], metavar="CLUSTERROLE", help="ClusterRoles to bind there")
    r.add_argument("--scope", nargs="+", default=[], help="free-form JWT scopes")
    r.add_argument("--audience", nargs="+", default=[], help="token audiences")
    r.add_argument("--emergency", action="store_true", help="issue at once (policy must allow); review follows")
    r.add_argument("--name", help="request name (default: <policy>-<timestamp>)")
    r.add_argument("--wait", action="store_true", help="wait until issued; print the Secret name")
    r.add_argument("--timeout", type=float, default=600, help="seconds --wait waits")
    for verb, helptext in (("approve", "approve a request"), ("deny", "deny a request"),
                           ("review", "close an emergency review"), ("revoke", "revoke a grant now"),
                           ("status", "show one request")):
        c = sub.add_parser(verb, parents=[common], help=helptext)
        c.add_argument("name")
        if verb in ("approve", "deny", "review"):
            c.add_argument("--comment")
    lst = sub.add_parser("list", parents=[common], help="list requests")
    lst.add_argument("-A", "--all-namespaces", action="store_true")
    t = sub.add_parser("token", parents=[common], help="print an issued grant's token (or write its kubeconfig)")
    t.add_argument("name")
    t.add_argument("--kubeconfig-out", metavar="FILE", help="write a ready kubeconfig (mode 0600) instead")
    v = sub.add_parser("verify", parents=[common], help="verify a token; exit 1 with the precise reason")
    v.add_argument("token", nargs="?", help="the token, or - for stdin")
    v.add_argument("--secret", metavar="NS/NAME", help="read the token from this Secret")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--jwks", metavar="URL", help="JWKS URL (the operator's /openid/v1/jwks)")
    src.add_argument("--from-cluster", action="store_true", help="read JWKS and revocations from the cluster (default)")
    v.add_argument("--issuer", help="expected iss (default with --jwks: the URL's issuer)")
    v.add_argument("--audience", default="breakglass", help="expected audience (default breakglass)")
    v.add_argument("--ca-file", help="CA bundle for --jwks")
    v.add_argument("--insecure-skip-tls-verify", action="store_true")
    v.add_argument("--operator-namespace", default=api.DEFAULT_OPERATOR_NAMESPACE)
    a = sub.add_parser("audit", help="audit log tools")
    asub = a.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    av = asub.add_parser("verify", parents=[common],
                         help="verify a hash-chained audit log against the head the operator publishes; "
                              "report the first broken link, a truncated tail or a re-sealed rewrite")
    av.add_argument("file")
    av.add_argument("--hmac-secret", help="HMAC key (or $BREAKGLASS_AUDIT_HMAC_SECRET; default: read the "
                                          "operator's Secret when allowed)")
    av.add_argument("--hmac-secret-name", default=api.AUDIT_HMAC_SECRET,
                    help=f"Secret (key `hmac`) in the operator namespace holding the key (default "
                         f"{api.AUDIT_HMAC_SECRET}; the chart's audit.hmacSecretName if set)")
    av.add_argument("--operator-namespace", default=api.DEFAULT_OPERATOR_NAMESPACE,
                    help=f"where the operator publishes the head (default {api.DEFAULT_OPERATOR_NAMESPACE})")
    av.add_argument("--offline", action="store_true", help="do not contact the cluster: chain (and HMAC) only")
    av.add_argument("--segment", action="store_true",
                    help="the file is a piece of the chain (rotated log, one container's stdout): its first "
                         "record may continue earlier ones")
    e = sub.add_parser("explain", parents=[common], help="simulate a request against the policies (creates nothing)")
    e.add_argument("-f", "--filename", required=True, help="request manifest, or - for stdin")
    e.add_argument("--as-user", help="simulate for this user instead of yourself")
    e.add_argument("--as-group", nargs="*", default=[], help="groups for --as-user")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return USAGE
    try:
        if args.command == "audit":
            if args.audit_command != "verify":
                parser.error("audit needs a subcommand: verify")
            return cmd_audit_verify(args, lambda: Client(args))
        if args.command == "verify":
            return cmd_verify(args, lambda: Client(args))
        client = Client(args)
        return {"request": cmd_request, "approve": cmd_approve, "deny": cmd_deny, "review": cmd_review,
                "revoke": cmd_revoke, "list": cmd_list, "status": cmd_status, "token": cmd_token,
                "explain": cmd_explain}[args.command](args, client)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
