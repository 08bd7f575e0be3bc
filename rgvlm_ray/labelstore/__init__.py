"""The label store: label sets beside raw datasets (layout.py), the join readers use (join.py), and export to
one joined table (export.py)."""
