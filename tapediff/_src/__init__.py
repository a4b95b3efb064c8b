"""tapediff's implementation.  Nothing here is public API: use the ``tapediff`` package."""
