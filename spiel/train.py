"""spiel-train: the Hydra training entry point (lands with the spiel-train issue)."""

import sys


def main() -> None:
    print("spiel-train: not implemented yet (see the spiel-train issue).", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
