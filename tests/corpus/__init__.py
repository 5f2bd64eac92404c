"""Bad-input corpus for the reliability tests: generated, never hand-picked (see generate.py)."""
