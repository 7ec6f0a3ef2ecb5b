"""State loss is detected, never silently trusted: a lost signing key revokes the grant it signed
(status never keeps saying Active), and the published revocation view is rebuilt from the ledger."""

from __future__ import annotations

import datetime as dt
import io
import json

from fake_kube import CREATED, World

from breakglass.stores import REVOCATIONS_KEY, RevocationStore
from breakglass.tokens.keys import Keyring


def test_a_grant_whose_signing_key_vanished_is_revoked_with_signing_key_lost():
    world = World()
    world.policy(requiredApprovals=0)
    world.request()
    world.at(1).reconcile()
    assert world.status()["phase"] == "Active"
    world.keys.ring = Keyring.new("ES256", CREATED)  # the keyring Secret was deleted and recreated
    world.at(2).reconcile()
    status = world.status()
    assert status["phase"] == "Revoked"
    revoked = next(c for c in status["conditions"] if c["type"] == "Revoked")
    assert revoked["reason"] == "SigningKeyLost"
    assert world.ledger.get(world.kube.of_kind("BreakGlassRequest")[0]["metadata"]["uid"])["state"] == "Revoked"


class _CMKube:
    """Just the ConfigMap calls RevocationStore makes."""

    def __init__(self):
        self.cm = None

    def get_configmap(self, namespace, name):
        return self.cm

    def update_configmap(self, namespace, name, mutate):
        data = mutate(dict((self.cm or {}).get("data") or {}))
        self.cm = {"metadata": {"name": name, "namespace": namespace}, "data": data}
        return data


def test_a_deleted_revocation_view_is_rebuilt_from_the_ledgers_revoked_grants():
    now = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)
    kube = _CMKube()
    store = RevocationStore(kube, "breakglass-system")
    revoked = [
        {
            "jti": "j1",
            "expiresAt": "2026-11-29T13:00:00Z",
            "reason": "Revoked",
            "request": {"namespace": "team-a", "name": "r1", "uid": "u1"},
        }
    ]
    assert store.sync(revoked, now) is True
    assert [e["jti"] for e in json.loads(kube.cm["data"][REVOCATIONS_KEY])] == ["j1"]
    assert store.sync(revoked, now) is False  # in line: nothing written
    kube.cm = None  # deleted by someone
    assert store.sync(revoked, now) is True
    assert [e["jti"] for e in json.loads(kube.cm["data"][REVOCATIONS_KEY])] == ["j1"]


def test_a_transition_is_audited_once_even_across_a_restart_that_repeats_it(tmp_path):
    from breakglass.audit import AuditLog
    from breakglass.audit_chain import verify_lines

    path = tmp_path / "audit.log"
    first = AuditLog(str(path), b"k" * 32, stream=io.StringIO())
    assert first.record("issued", key="uid-1:issued", jti="j1") is not None
    assert first.record("issued", key="uid-1:issued", jti="j1") is None  # a retried pass
    again = AuditLog(str(path), b"k" * 32, stream=io.StringIO())  # the restarted operator
    assert again.record("issued", key="uid-1:issued", jti="j1") is None
    assert again.record("expired", key="uid-1:expired") is not None
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["issued", "expired"]
    assert verify_lines(lines, b"k" * 32)[1] is None
