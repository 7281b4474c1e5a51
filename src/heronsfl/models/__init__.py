"""Networks expressed as named stages, so any stage boundary can be the cut."""
