"""recipetune: declarative, plugin-based fine-tuning of LLMs.

The public API for plugin authors::

    from recipetune import hookimpl, Backend, Options, Loaded

Everything a plugin needs is importable from here; nothing here imports torch.
"""

__version__ = "0.1.0"

from .components import (
    Adapter,
    Artifact,
    Backend,
    ChatTemplate,
    Component,
    DatasetFormat,
    Exporter,
    FormattedDataset,
    Loaded,
    Options,
    ReportBlock,
    Reporter,
    Trainer,
    TrainResult,
)
from .hookspecs import hookimpl, hookspec
from .problems import Problem, RecipeError, StageError, UserError
from .recipe import ExistingRecipePath, PathOrHubId, Recipe, RecipePath, Section, load_recipe, load_recipe_text
from .run import STAGES, Run

__all__ = [
    "Adapter", "Artifact", "Backend", "ChatTemplate", "Component", "DatasetFormat", "Exporter",
    "ExistingRecipePath", "FormattedDataset", "Loaded", "Options", "PathOrHubId", "Problem", "Recipe", "RecipeError",
    "RecipePath", "ReportBlock", "Reporter", "Run", "STAGES", "Section", "StageError", "TrainResult",
    "Trainer", "UserError", "__version__", "hookimpl", "hookspec", "load_recipe", "load_recipe_text",
]
