"""Data: task builders (`tasks`), the built-in synthetic ShapesWorld (`shapes`), and later the importers."""
