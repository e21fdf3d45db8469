"""Measuring: one timing harness, and the commands that measure with it (bench, yardstick, auto)."""
