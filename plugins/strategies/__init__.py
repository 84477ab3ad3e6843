"""Source-selection strategy plugins: MBTL / SD-MBTL and the reference baselines."""
