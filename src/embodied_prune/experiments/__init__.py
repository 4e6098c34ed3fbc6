"""Experiment runners behind ``embodied-prune experiment KIND --config FILE`` (tokens: visual-token pruning)."""
