"""Evaluation data for the real base model (Gemma 3 270M), written by hand: held-out general-knowledge facts
for retention and cultural items outside the world's topic table for generalization."""

from trainer.real_data.records import CultureItem, Fact, load_culture_items, load_facts

__all__ = ["CultureItem", "Fact", "load_culture_items", "load_facts"]
