"""The tasks/ and tasks_disabled/ layout, the conf files in it, and their checks."""
