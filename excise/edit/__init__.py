"""Edit: remove a fact by rewriting only located components; every editor returns a reversible Edit."""
