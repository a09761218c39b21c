"""askonce package."""
