"""How good a label set is: `rgvlm label-report` with ground truth (report) and without it (gtfree), and
`rgvlm view`'s HTML pages (view). Nothing upstream imports this package; experiments and commands do."""
