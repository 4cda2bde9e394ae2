"""The example agent and the end-to-end flywheel run behind ``make demo``."""
