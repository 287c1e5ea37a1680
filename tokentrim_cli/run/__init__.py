"""One video run: the plan, the loop's driver, its start (image, extend, resume) and its prompt timeline."""
