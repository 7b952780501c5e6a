"""The four command-line entry points: spiel-train, spiel-eval, spiel-export, spiel-plan."""
