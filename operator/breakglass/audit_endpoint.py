"""The HTTP side of the audit sink (`POST /audit`, once the caller's certificate is checked):
admission before the body is read, a small body in memory, a large one spooled to a file, the
parse-and-store off the event loop (usage_sink.UsageSink.handle)."""

from __future__ import annotations

import asyncio
import tempfile
import time

from aiohttp import web

from . import metrics
from .usage_sink import MAX_BODY, MAX_SPOOL, UsageSink


async def receive_batch(request: web.Request, usage: UsageSink | None, started: float) -> web.Response:
    if usage is None:
        return web.json_response({"error": "audit sink not running"}, status=503)
    length = request.content_length
    if length is None or length > MAX_SPOOL:
        metrics.audit_events_total.labels("malformed").inc()
        return web.json_response({"error": f"a batch needs a Content-Length of at most {MAX_SPOOL}"}, status=413)
    if not usage.admit():  # before the body is read: memory stays bounded by max in flight
        return web.json_response({"error": "audit sink busy: send again later"}, status=503)
    spooled = length > MAX_BODY
    if spooled and not usage.admit_spool():
        usage.release()
        return web.json_response({"error": "audit sink busy: send again later"}, status=503)
    body = None
    try:
        body = await _read_body(request, length)
        status, message = await asyncio.get_running_loop().run_in_executor(usage.executor, usage.handle, body)
    except asyncio.IncompleteReadError:
        status, message = 400, "body shorter than its Content-Length"
    except OSError as exc:  # the spool could not be written (disk full): kube-apiserver resends
        status, message = 503, f"cannot spool the batch: {exc.strerror}"
    finally:
        if body is not None and not isinstance(body, bytes):
            body.close()  # handled, or not: the spool file goes either way
        if spooled:
            usage.release_spool()
        usage.release()
    metrics.audit_handling_seconds.observe(time.perf_counter() - started)
    return web.json_response({"error": message} if status >= 400 else {"status": message}, status=status)


async def _read_body(request: web.Request, length: int):
    """A small body in memory; a large one spooled to a temporary file (read event by event)."""
    if length <= MAX_BODY:
        return await request.content.readexactly(length)
    spool = tempfile.TemporaryFile()  # noqa: SIM115 — handed to the parser; closed by the caller
    try:
        remaining = length
        while remaining:
            chunk = await request.content.read(min(remaining, 1 << 20))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            spool.write(chunk)
            remaining -= len(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool
