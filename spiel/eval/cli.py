"""spiel-eval: the Hydra evaluation entry point (lands with the spiel-eval issue)."""

import sys


def main() -> None:
    print("spiel-eval: not implemented yet (see the spiel-eval issue).", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
