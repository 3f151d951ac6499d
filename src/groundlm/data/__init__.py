"""Data: task builders (`tasks`), ShapesWorld (`shapes`), importers of real formats (`importers`), datasets and mixtures."""
