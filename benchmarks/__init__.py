"""Recipes that measure the project's claims: run each as `python -m benchmarks.<recipe> --help`."""
