"""`rgvlm study` (docs/study.md): the arms it plans, the runs it trains and evaluates, and study.md's report."""
