"""Datasets: JSONL files registered as `name-version`, immutable once imported.

`validation` and `rendering` (standard library only: formats, the streaming validator, the
training text in the family's chat template, length statistics), `services` (import,
delete), `selectors` (lookups, previews, statistics), and the entry points `api`, `views`,
`forms`, `urls`, `uploads`.
"""
