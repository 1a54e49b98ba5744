"""The peer suites are opt-in (``python -m tests.peer`` / ``make peer``): nothing here is collected by
the default ``pytest`` run, neither our programs nor the downloaded suites under .cache/."""

collect_ignore_glob = ["*"]
