"""SpielModel (a base model whose target linear layers carry sparse deltas), its config and the choice of
target layers."""
