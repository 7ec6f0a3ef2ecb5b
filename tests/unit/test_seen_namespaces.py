"""Admission remembers namespaces it saw exist, briefly; never the ones it did not."""

from __future__ import annotations


def test_admission_remembers_only_namespaces_seen_to_exist_and_only_for_a_while(monkeypatch):
    from breakglass import seen_namespaces

    asked, exists, clock = [], {"team-a": True, "typo": False}, [100.0]
    monkeypatch.setattr(seen_namespaces.time, "monotonic", lambda: clock[0])
    seen = seen_namespaces.SeenNamespaces(lambda n: asked.append(n) or exists[n], ttl=10)
    assert seen("team-a") and seen("team-a") and asked == ["team-a"]
    assert not seen("typo") and not seen("typo") and asked == ["team-a", "typo", "typo"]
    clock[0] += 11
    exists["team-a"] = False
    assert not seen("team-a"), "asked again after the ttl"
