"""The ``tokentrim`` entry point: signal handlers first, then the command, whose imports take a while."""

import sys


def run() -> None:
    import os

    from .signals import install_handlers

    install_handlers()
    # OpenMP threads that spin while waiting steal the CPU from a neighbour and from each other (beside another
    # torch job a 2 s toy video took 18.8 s, 12.4 s waiting passively: bench/threads.py). Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("tokentrim: interrupted", file=sys.stderr)
        _exit_interrupted()
    try:
        main()
    except SystemExit as exc:
        if exc.code == 130:
            _exit_interrupted()
        raise


def _exit_interrupted() -> None:
    """Exit 130 at once. Seen with CPython 3.11: after a Ctrl-C that came while the command imported or loaded,
    a normal ``sys.exit(130)`` sometimes ended as death by SIGINT (status -2 to the parent, not 130), with only the
    main thread left and the interrupt handled; the cause was not pinned down. Everything is written and closed
    by this point, so skipping the interpreter's shutdown loses nothing."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":
    run()
