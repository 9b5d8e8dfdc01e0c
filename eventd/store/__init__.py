"""Storage backends behind one seam (see issue 13); jetstream.py and dedup.py: the cluster store."""
