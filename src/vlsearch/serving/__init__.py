"""Online serving: the retrieval engine (channels, constraints, merge) and the HTTP app + web page."""
