"""`m3 view`: a browser viewer of one memory (viser), for people who would rather look than read."""
