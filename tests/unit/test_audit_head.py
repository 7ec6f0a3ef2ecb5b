"""The audit chain proves itself — its head is published in the cluster after
every append, `audit verify` compares a file against it, and an HMAC key exists by default.

Real files on disk; the ConfigMap and Secret APIs are in-memory fakes with the Kube signatures."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import io
import json
import threading
import time

import pytest

from breakglass import api
from breakglass.audit import AuditLog
from breakglass.audit_chain import GENESIS, canonical, parse_head, verify_against_head, verify_lines
from breakglass.audit_head import AuditHead, ensure_hmac_key
from breakglass.plugin import cli

NS = "breakglass-system"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


class ApiDown(Exception):
    pass


class FakeConfigMaps:
    """get_configmap / update_configmap with Kube's signatures; can fail the next N writes."""

    def __init__(self):
        self.objects: dict[tuple[str, str], dict] = {}
        self.writes = 0
        self.fail_next = 0
        self.delay = 0.0
        self._lock = threading.Lock()

    def get_configmap(self, namespace, name):
        with self._lock:
            cm = self.objects.get((namespace, name))
            return copy.deepcopy(cm) if cm is not None else None

    def update_configmap(self, namespace, name, mutate):
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                raise ApiDown("apiserver unavailable")
            cm = self.objects.setdefault(
                (namespace, name), {"metadata": {"name": name, "namespace": namespace}, "data": {}}
            )
            cm["data"] = mutate(dict(cm["data"]))
            self.writes += 1
            return cm["data"]

    def head(self):
        cm = self.objects.get((NS, api.AUDIT_HEAD_CONFIGMAP))
        return json.loads(cm["data"]["head.json"]) if cm else None


class FakeSecrets:
    def __init__(self, existing: dict | None = None, race_with: dict | None = None):
        self.objects = {} if existing is None else {(NS, api.AUDIT_HMAC_SECRET): existing}
        self.race_with = race_with  # created by "another replica" between our get and our create
        self.created = []

    def get_secret(self, namespace, name):
        return copy.deepcopy(self.objects.get((namespace, name)))

    def create_secret_if_absent(self, body):
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if self.race_with is not None and key not in self.objects:
            self.objects[key] = self.race_with
        if key in self.objects:
            return copy.deepcopy(self.objects[key]), False
        self.objects[key] = copy.deepcopy(body)
        self.created.append(body)
        return copy.deepcopy(body), True


def _head(cms: FakeConfigMaps) -> AuditHead:
    return AuditHead(NS, cms.get_configmap, cms.update_configmap, clock=lambda: T0)


def _write(path, n, key=None, on_append=None, head=None):
    log = AuditLog(str(path), key, stream=io.StringIO(), on_append=on_append, head=head)
    for i in range(n):
        log.record("issued", request={"name": f"r{i}"}, jti=f"j{i}")
    return log


def _reseal(lines, from_index, edit):
    """What an attacker with the file but without the HMAC key does: edit a record, recompute every hash."""
    recs = [json.loads(x) for x in lines]
    edit(recs[from_index])
    prev = recs[from_index - 1]["hash"] if from_index else GENESIS
    for rec in recs[from_index:]:
        rec["prev"] = prev
        rec.pop("hmac", None)
        rec["hash"] = prev = hashlib.sha256(canonical(rec)).hexdigest()
    return [json.dumps(r, sort_keys=True, separators=(",", ":")) for r in recs]


# ---------------------------------------------------------------- the hook and the published head
def test_every_append_calls_the_hook_with_its_seq_and_hash_after_the_record_is_on_disk(tmp_path):
    path, seen = tmp_path / "audit.log", []

    def hook(seq, digest):
        on_disk = [json.loads(x) for x in path.read_text().splitlines()]
        seen.append((seq, digest, on_disk[-1]["seq"], on_disk[-1]["hash"]))

    _write(path, 3, on_append=hook)
    assert [(s, d) for s, d, _, _ in seen] == [(s, d) for _, _, s, d in seen]
    assert [s for s, *_ in seen] == [0, 1, 2]


def test_the_head_configmap_holds_seq_hash_and_time_of_the_last_record(tmp_path):
    cms = FakeConfigMaps()
    head = _head(cms)
    log = _write(tmp_path / "audit.log", 4, on_append=head.publish)
    last = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert cms.head() == {"seq": 3, "hash": last["hash"], "time": "2026-01-02T03:04:05Z"}
    assert head.read() == cms.head()
    assert log.discrepancy is None


def test_an_append_whose_head_cannot_be_published_raises_but_stays_in_the_chain(tmp_path):
    cms = FakeConfigMaps()
    path = tmp_path / "audit.log"
    log = _write(path, 2, on_append=_head(cms).publish)
    cms.fail_next = 1
    with pytest.raises(ApiDown):
        log.record("issued", request={"name": "unsealed"})
    assert cms.head()["seq"] == 1, "the head did not move"
    assert verify_lines(path.read_text().splitlines()) == (3, None), "the record is written and chained"
    log.record("failed", request={"name": "unsealed"})
    assert cms.head()["seq"] == 3, "the next append's head covers the unsealed record too"


def test_the_head_never_moves_backwards():
    cms = FakeConfigMaps()
    _head(cms).publish(7, "a" * 64)
    _head(cms).publish(5, "b" * 64)  # e.g. a slower writer, or a second process
    assert cms.head()["seq"] == 7 and cms.head()["hash"] == "a" * 64


def test_concurrent_appends_share_head_writes_and_each_returns_only_once_covered(tmp_path):
    cms = FakeConfigMaps()
    cms.delay = 0.02
    head = _head(cms)
    covered = []

    def hook(seq, digest):
        head.publish(seq, digest)
        covered.append(cms.head()["seq"] >= seq)

    log = AuditLog(str(tmp_path / "audit.log"), stream=io.StringIO(), on_append=hook)
    threads = [threading.Thread(target=log.record, args=("issued",), kwargs={"n": i}) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert covered == [True] * 24
    assert cms.head()["seq"] == 23
    assert cms.writes < 24, f"{cms.writes} writes for 24 appends: publishes were not grouped"


def test_when_the_publishing_writer_fails_a_waiting_writer_publishes_itself():
    cms = FakeConfigMaps()
    cms.delay, cms.fail_next = 0.05, 1
    head = _head(cms)
    results = {}

    def publish(seq):
        try:
            head.publish(seq, f"{seq:064x}")
            results[seq] = "ok"
        except ApiDown:
            results[seq] = "failed"

    first = threading.Thread(target=publish, args=(1,))
    first.start()
    time.sleep(0.01)
    second = threading.Thread(target=publish, args=(2,))
    second.start()
    first.join()
    second.join()
    assert sorted(results.values()) == ["failed", "ok"]
    assert cms.head()["seq"] == 2


@pytest.mark.parametrize(
    "data,problem",
    [
        ({"seq": -1, "hash": "a" * 64}, "seq"),
        ({"seq": "3", "hash": "a" * 64}, "seq"),
        ({"seq": True, "hash": "a" * 64}, "seq"),
        ({"seq": 3, "hash": "xyz"}, "hash"),
        ({"seq": 3}, "hash"),
        ([], "object"),
    ],
    ids=[
        "a negative seq is refused",
        "a string seq is refused",
        "a boolean seq is refused",
        "a hash that is not SHA-256 hex is refused",
        "a missing hash is refused",
        "a non-object is refused",
    ],
)
def test_a_malformed_head_is_refused(data, problem):
    with pytest.raises(ValueError, match=problem):
        parse_head(json.dumps(data))


def test_reading_a_head_that_was_never_published_gives_none():
    assert _head(FakeConfigMaps()).read() is None


# ---------------------------------------------------------------- the chain resumes from the head
def test_without_a_file_each_restart_continues_the_published_chain_so_stdout_verifies_as_one(tmp_path):
    cms, stdout = FakeConfigMaps(), io.StringIO()
    for run in range(3):
        head = _head(cms)
        log = AuditLog(None, stream=stdout, on_append=head.publish, head=head.read())
        assert log.discrepancy is None
        log.record("started", run=run)
        log.record("issued", run=run)
    lines = stdout.getvalue().splitlines()
    assert verify_against_head(lines, cms.head()) == (6, None)


RESUME_CASES = {  # case: (seq of the next record, what `discrepancy` says or None)
    "file and head agree": (4, None),
    "the head lags the file (a publish failed)": (4, None),
    "the file lost its tail": (6, "lost 2 record(s)"),
    "the file was rewritten": (6, "rewritten"),
    "the file is new": (6, "has no records"),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_at_start_the_chain_continues_from_the_file_only_when_it_holds_the_sealed_head(tmp_path, case):
    next_seq, discrepancy = RESUME_CASES[case]
    path = tmp_path / "audit.log"
    _write(path, 6)
    lines = path.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    head = {"seq": 5, "hash": recs[5]["hash"], "time": "t"}
    if case == "file and head agree":
        lines, head = lines[:4], {"seq": 3, "hash": recs[3]["hash"]}
    elif case == "the head lags the file (a publish failed)":
        lines, head = lines[:4], {"seq": 2, "hash": recs[2]["hash"]}
    elif case == "the file lost its tail":
        lines = lines[:4]
    elif case == "the file was rewritten":
        lines = _reseal(lines, 2, lambda r: r.update(jti="forged"))
    elif case == "the file is new":
        lines = []
    path.write_text("".join(x + "\n" for x in lines))
    log = AuditLog(str(path), stream=io.StringIO(), head=head)
    rec = log.record("next")
    assert rec["seq"] == next_seq
    if discrepancy is None:
        assert log.discrepancy is None
        assert verify_lines(path.read_text().splitlines()) == (len(lines) + 1, None)
    else:
        assert discrepancy in log.discrepancy
        assert rec["prev"] == head["hash"], "linked to the sealed head, not to the disputed file"


# ---------------------------------------------------------------- verify_against_head
def _sealed(tmp_path, n=6, key=None):
    cms = FakeConfigMaps()
    path = tmp_path / "audit.log"
    _write(path, n, key=key, on_append=_head(cms).publish)
    return path.read_text().splitlines(), cms.head()


@pytest.mark.parametrize(
    "mutate,key,line,problem",
    [
        (lambda ls, h: (ls, h), None, None, None),
        (lambda ls, h: (ls[:-2], h), None, 5, "truncated"),
        (lambda ls, h: ([], h), None, 1, "truncated"),
        (lambda ls, h: (_reseal(ls, 2, lambda r: r.update(jti="forged")), h), None, 6, "re-sealed"),
        (lambda ls, h: (_reseal(ls, 5, lambda r: r.update(jti="forged")), h), None, 6, "re-sealed"),
        (lambda ls, h: (_reseal(ls, 2, lambda r: r.update(jti="forged")), h), b"k", 3, "HMAC"),
        (lambda ls, h: (ls[:1] + ls[2:], h), None, 2, "previous-hash"),
        (lambda ls, h: (ls, dict(h, seq=h["seq"] - 2, hash=json.loads(ls[-3])["hash"])), None, None, None),
    ],
    ids=[
        "an untouched file matches its head",
        "a truncated tail is reported where the records are missing",
        "an emptied file is a truncated file",
        "a re-sealed rewrite is reported at the head's record",
        "a re-sealed rewrite of the last record is reported",
        "with HMAC a re-sealed rewrite fails at the edit",
        "a broken link is still reported first",
        "records after a lagging head are not a break",
    ],
)
def test_a_file_is_checked_against_the_published_head(tmp_path, mutate, key, line, problem):
    lines, head = _sealed(tmp_path, key=key)
    lines, head = mutate(lines, head)
    if problem == "re-sealed":
        assert verify_lines(lines) == (6, None), "the rewrite passes the chain check alone"
    count, broken = verify_against_head(lines, head, key)
    if problem is None:
        assert broken is None
    else:
        assert broken is not None and broken.line == line and problem in broken.problem, broken


def test_a_segment_is_verified_from_its_first_record_on(tmp_path):
    lines, head = _sealed(tmp_path)
    assert verify_lines(lines[3:])[1].line == 1
    assert verify_lines(lines[3:], segment=True) == (3, None)
    assert verify_against_head(lines[3:-1], head, segment=True)[1].problem.endswith("(truncated)")


# ---------------------------------------------------------------- the HMAC key
def test_the_hmac_key_is_generated_once_as_32_random_bytes_in_base64():
    secrets_api = FakeSecrets()
    key = ensure_hmac_key(NS, secrets_api.get_secret, secrets_api.create_secret_if_absent)
    (body,) = secrets_api.created
    assert body["metadata"]["name"] == api.AUDIT_HMAC_SECRET and body["metadata"]["namespace"] == NS
    assert base64.b64decode(body["data"]["hmac"]) == key
    assert len(base64.urlsafe_b64decode(key + b"=")) == 32
    assert key.decode().isprintable(), "usable as --hmac-secret and as an env variable"
    again = ensure_hmac_key(NS, secrets_api.get_secret, secrets_api.create_secret_if_absent)
    assert again == key and len(secrets_api.created) == 1


def test_on_a_create_race_the_key_that_won_is_used():
    theirs = {"metadata": {"name": api.AUDIT_HMAC_SECRET}, "data": {"hmac": base64.b64encode(b"x" * 43).decode()}}
    secrets_api = FakeSecrets(race_with=theirs)
    assert ensure_hmac_key(NS, secrets_api.get_secret, secrets_api.create_secret_if_absent) == b"x" * 43
    assert secrets_api.created == []


@pytest.mark.parametrize(
    "data",
    [{}, {"hmac": ""}, {"hmac": "not base64!"}, {"hmac": base64.b64encode(b"short").decode()}],
    ids=["a Secret without the key", "an empty key", "a key that is not base64", "a short key"],
)
def test_an_unusable_hmac_secret_stops_the_operator_instead_of_running_without_hmac(data):
    secrets_api = FakeSecrets(existing={"metadata": {"name": api.AUDIT_HMAC_SECRET}, "data": data})
    with pytest.raises(ValueError, match="audit HMAC Secret"):
        ensure_hmac_key(NS, secrets_api.get_secret, secrets_api.create_secret_if_absent)


# ---------------------------------------------------------------- kubectl breakglass audit verify
class FakeClient:
    """The plugin Client's get_configmap/get_secret: CliError with its exit code, like the real one."""

    def __init__(self, cms: FakeConfigMaps, secret=None, secret_error=None):
        self.cms, self.secret, self.secret_error = cms, secret, secret_error

    def get_configmap(self, namespace, name):
        cm = self.cms.get_configmap(namespace, name)
        if cm is None:
            raise cli.CliError(f"ConfigMap {namespace}/{name} not found", cli.NOT_FOUND)
        return cm

    def get_secret(self, namespace, name):
        if self.secret_error:
            raise self.secret_error
        if self.secret is None:
            raise cli.CliError(f"Secret {namespace}/{name} not found", cli.NOT_FOUND)
        return self.secret


def _unreachable():
    raise cli.CliError("cannot load kubeconfig: no configuration found", cli.API_ERROR)


def _connection_refused():
    class MaxRetryError(Exception):
        pass

    raise MaxRetryError("Max retries exceeded (Connection refused)")


@pytest.fixture
def sealed_run(tmp_path):
    """An operator run with the generated HMAC key: the file, the head, the Secret."""
    secrets_api = FakeSecrets()
    key = ensure_hmac_key(NS, secrets_api.get_secret, secrets_api.create_secret_if_absent)
    cms = FakeConfigMaps()
    path = tmp_path / "audit.log"
    _write(path, 5, key=key, on_append=_head(cms).publish)
    return path, cms, secrets_api.objects[(NS, api.AUDIT_HMAC_SECRET)], key


FORBIDDEN = cli.CliError("not allowed: secrets is forbidden", cli.NOT_OK)


@pytest.mark.parametrize(
    "setup,flags,code,stdout_has,stderr_has",
    [
        (
            "as written",
            [],
            0,
            [
                "OK: 5 record(s), chain intact and HMACs verified",
                "tail matches the cluster's head (seq 4)",
                "head seq 4",
                "Secret breakglass-system/breakglass-audit-hmac",
            ],
            [],
        ),
        ("truncated", [], 1, ["BROKEN at line 4 (seq 3)", "truncated", "head seq 4"], []),
        ("re-sealed, key readable", [], 1, ["BROKEN at line 2", "HMAC"], []),
        (
            "re-sealed, key forbidden",
            [],
            1,
            ["BROKEN at line 5 (seq 4)", "re-sealed", "HMAC:    NOT checked"],
            ["not allowed to read it"],
        ),
        ("as written, key forbidden", [], 0, ["chain intact;", "tail matches"], ["HMAC NOT checked"]),
        ("as written, key given", ["--hmac-secret", "@key"], 0, ["HMACs verified", "key from --hmac-secret"], []),
        ("as written, wrong key given", ["--hmac-secret", "wrong"], 1, ["HMAC does not verify"], []),
        (
            "cluster unreachable",
            [],
            0,
            ["chain intact;", "tail NOT checked"],
            ["cannot reach the cluster", "the tail was NOT checked"],
        ),
        ("connection refused", [], 0, ["tail NOT checked"], ["cannot reach the cluster (MaxRetryError"]),
        ("cluster unreachable, truncated", [], 0, ["tail NOT checked"], ["the tail was NOT checked"]),
        ("cluster unreachable, edited", [], 1, ["BROKEN at line 3", "edited"], ["cannot reach the cluster"]),
        ("no head published", [], 0, ["tail NOT checked"], ["no audit head published"]),
        ("malformed head", [], 1, ["BROKEN: the cluster's audit head", "malformed"], []),
        ("as written", ["--offline"], 0, ["tail NOT checked"], ["--offline", "the tail was NOT checked"]),
        ("segment", [], 1, ["BROKEN at line 1", "previous-hash"], []),
        ("segment", ["--segment"], 0, ["seq 2..4", "tail matches"], ["starts at seq 2"]),
    ],
    ids=[
        "an untouched file verifies against the head and the generated key",
        "a truncated tail fails against the head",
        "a re-sealed rewrite fails on HMAC when the key is readable",
        "a re-sealed rewrite fails on the head even when the key is forbidden",
        "a forbidden key is said, and the head still checks the tail",
        "a key given on the command line is used",
        "a wrong key fails",
        "an unreachable cluster is said and the chain alone decides",
        "a refused connection counts as unreachable, not as a crash",
        "a truncation passes only with a warning when the cluster is unreachable",
        "an edited file fails even when the cluster is unreachable",
        "a missing head is said",
        "a malformed head fails closed",
        "offline verifies the chain only and says so",
        "a file starting mid-chain fails by default",
        "a segment verifies with --segment and says where it starts",
    ],
)
def test_audit_verify(sealed_run, capsys, monkeypatch, setup, flags, code, stdout_has, stderr_has):
    monkeypatch.delenv("BREAKGLASS_AUDIT_HMAC_SECRET", raising=False)
    path, cms, secret, key = sealed_run
    lines = path.read_text().splitlines()
    client = FakeClient(cms, secret=secret)
    factory = lambda: client  # noqa: E731
    if "truncated" in setup:
        lines = lines[:3]
    if "re-sealed" in setup:
        lines = _reseal(lines, 1, lambda r: r.update(jti="forged"))
    if "edited" in setup:
        lines[2] = lines[2].replace('"j2"', '"jX"')
    if "key forbidden" in setup:
        client.secret_error = FORBIDDEN
    if "unreachable" in setup:
        factory = _unreachable
    if setup == "connection refused":
        factory = _connection_refused
    if setup == "no head published":
        cms.objects.clear()
    if setup == "malformed head":
        cms.objects[(NS, api.AUDIT_HEAD_CONFIGMAP)]["data"]["head.json"] = '{"seq": "x"}'
    if setup == "segment":
        lines = lines[2:]
    path.write_text("".join(x + "\n" for x in lines))
    flags = [key.decode() if f == "@key" else f for f in flags]
    if flags[:1] == ["--hmac-secret"]:  # one argument: a random key may start with "-" (it looked like a flag)
        flags = [f"--hmac-secret={flags[1]}", *flags[2:]]
    args = cli.build_parser().parse_args(["audit", "verify", str(path), *flags])
    assert cli.cmd_audit_verify(args, factory) == code
    out, err = capsys.readouterr()
    for text in stdout_has:
        assert text in out, out
    for text in stderr_has:
        assert text in err, err
    if code == 0 and "tail NOT checked" in out:
        assert "WARNING" in err


def test_audit_verify_takes_cluster_flags_after_the_subcommand():
    args = cli.build_parser().parse_args(
        [
            "audit",
            "verify",
            "f.log",
            "--kubeconfig",
            "k",
            "--context",
            "c",
            "--operator-namespace",
            "ops",
            "--hmac-secret-name",
            "mine",
        ]
    )
    assert (args.kubeconfig, args.context, args.operator_namespace, args.hmac_secret_name) == ("k", "c", "ops", "mine")


def test_a_missing_file_is_a_usage_error_before_the_cluster_is_asked(tmp_path, capsys):
    def never():
        raise AssertionError("the cluster was asked")

    assert cli.main(["audit", "verify", str(tmp_path / "nope.log"), "--offline"]) == cli.USAGE
    args = cli.build_parser().parse_args(["audit", "verify", str(tmp_path / "nope.log")])
    with pytest.raises(cli.CliError) as exc:
        cli.cmd_audit_verify(args, never)
    assert exc.value.code == cli.USAGE
