"""Experiments on top of the domain packages: `rgvlm run` (demo), `rgvlm study` and their reports, and the
workspace both keep their outputs in. Nothing upstream imports this package; only commands/ do."""
