"""A token Secret deleted by hand wakes its grant's reconcile; a restart compares the ledger with the
set of Secrets that exist (metadata only)."""

from __future__ import annotations

from breakglass import api
from breakglass.token_secrets import TokenSecrets


class Pages:
    def __init__(self, items):
        self.items = items

    def iter_secret_metadata_pages(self, namespace, selector, limit=500):
        assert selector == f"{api.MANAGED_BY_LABEL}={api.MANAGED_BY}"
        yield self.items, "42"


def secret(uid, name="r1", namespace="team-a"):
    return {"metadata": {"uid": uid, "labels": {api.REQUEST_LABEL: name, api.REQUEST_NS_LABEL: namespace}}}


def test_the_set_says_which_token_secrets_exist_once_listed_and_nothing_before():
    woken = []
    secrets = TokenSecrets(Pages([secret("s1")]), "breakglass-system", lambda ns, n: woken.append((ns, n)))
    assert secrets.present("breakglass-system", "s1") is None, "unknown before the first list"
    secrets.informer.relist()
    assert secrets.present("breakglass-system", "s1") is True
    assert secrets.present("breakglass-system", "s2") is False
    assert secrets.present("team-a", "s1") is None, "Secrets in other namespaces are not watched"


def test_a_deleted_token_secret_wakes_its_request_and_leaves_the_set():
    woken = []
    secrets = TokenSecrets(Pages([secret("s1")]), "breakglass-system", lambda ns, n: woken.append((ns, n)))
    secrets.informer.relist()
    secrets._on_event("DELETED", secret("s1"))
    assert woken == [("team-a", "r1")] and secrets.present("breakglass-system", "s1") is False
    secrets._on_event("ADDED", secret("s3", name="r3"))
    assert secrets.present("breakglass-system", "s3") is True and woken == [("team-a", "r1")]
