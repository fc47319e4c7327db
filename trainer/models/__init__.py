"""Model kinds. `MODELS` lists each kind once; importing it costs numpy, scipy and pydantic only."""

from trainer.models import als, itemcf, ncf, popularity
from trainer.models.base import ModelSpec, Params, Scorer, top_n, top_n_rows

MODELS: dict[str, ModelSpec] = {
    spec.kind: spec for spec in (popularity.SPEC, itemcf.SPEC, als.SPEC, ncf.SPEC)
}
KINDS: tuple[str, ...] = tuple(MODELS)

__all__ = ["KINDS", "MODELS", "ModelSpec", "Params", "Scorer", "top_n", "top_n_rows"]
