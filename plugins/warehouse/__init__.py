"""What every warehouse destination (postgres, duckdb) shares, with no database driver
in sight: how a Segment message becomes rows (``rows.py``), how a batch's rows are
grouped into per-table column arrays and which SQL upserts users and identity links
(``batches.py``), which rows hold a person an erasure deletes (``erasure.py``).

Not a destination itself: it registers nothing.
"""
