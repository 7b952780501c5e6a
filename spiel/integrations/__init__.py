"""SpIEL inside any transformers Trainer: the mixin and the selector callback (public API)."""
