"""The ``tokentrim`` entry point: signal handlers first, then the command, whose imports take a while."""

import sys


def run() -> None:
    from .signals import install_handlers

    install_handlers()
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("tokentrim: interrupted", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
