"""`breakglass-operator` / `python -m breakglass`: run the operator, or manage its keys."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _parser() -> argparse.ArgumentParser:
    from . import settings as settings_mod

    parser = argparse.ArgumentParser(
        prog="breakglass-operator",
        description="Break-glass access for Kubernetes: approved, scoped, audited, expiring.",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the operator (default)")
    settings_mod.add_arguments(run)
    run.add_argument("--verbose", action="store_true", help="debug logging")
    keys = sub.add_parser("keys", help="signing key management")
    keys_sub = keys.add_subparsers(dest="keys_command")
    rotate = keys_sub.add_parser(
        "rotate", help="make a new key the signer; old public keys stay until their tokens expire"
    )
    settings_mod.add_arguments(rotate)
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        argv = ["run"] + argv
    parser = _parser()
    args = parser.parse_args(argv)
    from . import __version__
    from . import settings as settings_mod

    if args.command == "version":
        print(__version__)
        return 0
    try:
        settings = settings_mod.from_args(args)
    except settings_mod.SettingsError as exc:
        print(f"breakglass-operator: {exc}", file=sys.stderr)
        return 2
    if args.command == "keys":
        if args.keys_command != "rotate":
            parser.error("keys needs a subcommand: rotate")
        return _rotate(settings)
    return _run(settings, verbose=args.verbose)


def _rotate(settings) -> int:
    from .k8s.client import Kube, load_config
    from .stores import KeyStore

    kube = Kube(load_config(settings.kubeconfig))
    store = KeyStore(kube, settings.namespace, settings.signing_alg)
    store.ensure()
    ring = store.rotate()
    print(f"rotated: new signing key {ring.active_kid}; JWKS now holds {len(ring.keys)} key(s)")
    return 0


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread its own malloc arena (up to 8 per core); with dozens of worker threads
    freed memory stays fragmented across them and RSS grows with every burst. Two arenas keep the
    memory per grant flat (measured in bench/scale.py); must run before the threads start."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _run(settings, verbose: bool) -> int:
    _limit_malloc_arenas()
    import kopf

    from . import handlers  # noqa: F401  (registers the kopf handlers)

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("kopf.objects", "kopf.activities.probe", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in settings.debug_loggers:
        logging.getLogger(name).setLevel(logging.DEBUG)
    import faulthandler
    import signal

    # `kill -USR1 <pid>` dumps every thread's stack to stderr: the first tool for a stuck operator.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig
    liveness = f"http://{settings.bind_address}:{settings.health_port}/healthz" if settings.health_port else None
    rc = 0
    try:
        # The settings travel in kopf's memo (handlers read memo.settings), not in a module global.
        kopf.run(clusterwide=True, standalone=True, liveness_endpoint=liveness, memo=kopf.Memo(settings=settings))
    except KeyboardInterrupt:
        pass
    except Exception:  # e.g. a watched CRD briefly 404 while kube-apiserver restarts: stop, be restarted
        logging.getLogger("breakglass").exception("operator stopped on an error")
        rc = 1
    # Exit now: a thread still blocked on a dead API server (an admission handler, housekeeping) must
    # not keep a stopped operator alive and unready. Everything that matters is already in the
    # cluster (ledger, audit head) or fsync'd; an interrupted pass is a crash the design repairs.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
