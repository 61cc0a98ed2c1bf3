"""The HTML report over a project's outputs (`cpt report`)."""
