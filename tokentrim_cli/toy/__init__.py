"""Toy procedural video world (coloured moving shapes with captions) for training small models and measuring drift."""
