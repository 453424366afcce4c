"""Recipes: TOML in, a validated :class:`Recipe` out (or every problem at once)."""

from .loader import load_recipe, load_recipe_text
from .model import FormatTable, Recipe, RecipeHeader, Section
from .types import ExistingRecipePath, PathOrHubId, RecipePath

__all__ = ["ExistingRecipePath", "FormatTable", "PathOrHubId", "Recipe", "RecipeHeader", "RecipePath", "Section", "load_recipe", "load_recipe_text"]
