"""spiel-train's config: the schema, its Hydra registration and validation, TrainingArguments, the checks
before a run starts."""
