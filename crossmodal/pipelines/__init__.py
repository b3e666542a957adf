"""End-to-end jobs behind the scripts (they sit above data, models, losses, training and evaluation)."""
