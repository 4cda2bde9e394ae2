"""Native prompt optimization: per-task examples, metrics, optimizers (one file each) and the
versioned prompt artifacts the agent picks up live."""
