"""The ``tokentrim`` entry point: signal handlers first, then the command, whose imports take a while."""

import sys


def run() -> None:
    import os

    from .signals import exit_interrupted, install_handlers
    from .startup import pause_collection

    install_handlers()
    pause_collection()  # until the command's work begins (signals.begin_work, or resume_collection)
    # OpenMP threads that spin while waiting steal the CPU from a neighbour and from each other (beside another
    # torch job a 2 s toy video took 18.8 s, 12.4 s waiting passively: bench/threads.py). Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("tokentrim: interrupted", file=sys.stderr)
        exit_interrupted()
    try:
        main()
    except SystemExit as exc:
        if exc.code == 130:
            exit_interrupted()
        raise


if __name__ == "__main__":
    run()
