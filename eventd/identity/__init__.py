"""Identity resolution: the identity graph, profiles and stitched delivery."""
