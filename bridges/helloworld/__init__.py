"""Layotto's demo component: a greeting kept in the process, no backend behind it."""
