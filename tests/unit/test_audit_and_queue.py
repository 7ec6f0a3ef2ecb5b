import io
import threading
import time

import pytest

from breakglass.audit import AuditLog
from breakglass.audit_chain import verify_lines
from breakglass.workqueue import WorkQueue


def _log(tmp_path, n=5, key=None):
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), key, stream=io.StringIO())
    for i in range(n):
        log.record("issued", request={"name": f"r{i}"}, jti=f"j{i}")
    return path


def test_an_untouched_chain_verifies(tmp_path):
    count, broken = verify_lines(_log(tmp_path).read_text().splitlines())
    assert (count, broken) == (5, None)


def test_the_chain_continues_across_restarts(tmp_path):
    path = _log(tmp_path, 3)
    AuditLog(str(path), stream=io.StringIO()).record("revoked", jti="j9")
    assert verify_lines(path.read_text().splitlines()) == (4, None)


@pytest.mark.parametrize(
    "mutate,line",
    [
        (lambda ls: ls[:2] + [ls[2].replace('"j2"', '"jX"')] + ls[3:], 3),
        (lambda ls: ls[:1] + ls[2:], 2),
        (lambda ls: ls[:1] + [ls[2], ls[1]] + ls[3:], 2),
        (lambda ls: ls[:2] + [ls[0]] + ls[2:], 3),
    ],
    ids=[
        "an edited record is found",
        "a deleted record is found",
        "swapped records are found",
        "an inserted record is found",
    ],
)
def test_tampering_is_detected_at_the_right_record(tmp_path, mutate, line):
    lines = _log(tmp_path).read_text().splitlines()
    count, broken = verify_lines(mutate(lines))
    assert broken is not None and broken.line == line


def test_hmac_detects_a_rechained_forgery(tmp_path):
    path = _log(tmp_path, 2, key=b"s3cret")
    assert verify_lines(path.read_text().splitlines(), b"s3cret") == (2, None)
    _, broken = verify_lines(path.read_text().splitlines(), b"wrong")
    assert broken.line == 1 and "HMAC" in broken.problem


def test_audit_records_refuse_tokens(tmp_path):
    with pytest.raises(ValueError):
        AuditLog(None, stream=io.StringIO()).record("issued", token="eyJ...")


def test_the_queue_runs_one_reconcile_per_key_at_a_time_and_collapses_bursts():
    running, seen, lock = set(), [], threading.Lock()

    def handler(key):
        with lock:
            assert key not in running
            running.add(key)
        time.sleep(0.05)
        with lock:
            running.discard(key)
            seen.append(key)

    q = WorkQueue(handler, workers=4)
    q.start()
    for _ in range(20):
        q.add("a")
    q.add("b")
    deadline = time.monotonic() + 5
    while (not q.idle() or len(seen) < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    q.stop()
    assert seen.count("a") <= 2 and seen.count("b") == 1


def test_the_queue_fires_delayed_keys_at_their_time():
    fired = []
    q = WorkQueue(lambda k: fired.append((k, time.time())), workers=1)
    q.start()
    at = time.time() + 0.3
    q.add_at("x", at)
    deadline = time.monotonic() + 3
    while not fired and time.monotonic() < deadline:
        time.sleep(0.01)
    q.stop()
    assert fired and fired[0][1] >= at - 0.01 and fired[0][1] - at < 0.5


def test_the_expiry_timer_deletes_the_exact_secret_at_exp_then_hands_over_to_the_reconcile():
    from breakglass.expiry import ExpiryTimer

    deleted, after = [], []
    timer = ExpiryTimer(
        lambda ns, name, uid: deleted.append((ns, name, uid, time.time())) or True,
        lambda key: after.append(key),
        workers=2,
    )
    timer.start()
    at = time.time() + 0.3
    timer.schedule(("ns", "r"), "ns", "r-token", "uid-1", at)
    timer.schedule(("ns", "r"), "ns", "r-token", "uid-1", at)  # duplicate scheduling is harmless
    timer.schedule(("ns", "gone"), "ns", "gone-token", "uid-2", at)
    timer.cancel(("ns", "gone"))
    deadline = time.monotonic() + 3
    while not after and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    timer.stop()
    assert [(d[0], d[1], d[2]) for d in deleted] == [("ns", "r-token", "uid-1")]
    assert deleted[0][3] >= at - 0.01 and deleted[0][3] - at < 0.5
    assert after == [("ns", "r")]
