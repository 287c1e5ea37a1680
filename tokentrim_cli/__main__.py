"""The ``tokentrim`` entry point: signal handlers first, then the command, whose imports take a while."""

import sys


def run() -> None:
    import os

    from .signals import install_handlers

    install_handlers()
    # OpenMP threads that spin while waiting steal the CPU from a busy neighbour and from each other (a 2 s toy
    # video took 150 s beside one busy process): wait passively unless told otherwise. Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("tokentrim: interrupted", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
