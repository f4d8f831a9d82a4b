"""The reference profile: what the training data looked like, feature by feature.

The trainer builds it from the training split and logs it to the MLflow run as the artifact
``reference_profile.json``; the model server loads it next to the model and compares live
traffic against it (drift). This module holds only the shared data contract, so that both
sides agree on one shape.

Numeric features are binned: ``bin_edges`` are the k-1 interior edges of k bins, the bins
being ``(-inf, e0], (e0, e1], ..., (e_{k-2}, +inf)`` (``numpy.searchsorted(edges, x,
side="left")`` gives the bin of x), and ``bin_frequencies`` the k reference proportions.
Categorical features list their categories and proportions; anything else seen live counts
as an unseen category.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

PROFILE_ARTIFACT = "reference_profile.json"
PROFILE_FORMAT_VERSION = 1


class Quantile(BaseModel):
    q: float = Field(ge=0, le=1)
    value: float


class FeatureProfile(BaseModel):
    name: str
    kind: Literal["numeric", "categorical"]
    dtype: str = Field(description="The pandas dtype of the column in the training data.")
    null_fraction: float = Field(default=0.0, ge=0, le=1)
    # numeric
    bin_edges: list[float] = Field(default_factory=list)
    bin_frequencies: list[float] = Field(default_factory=list)
    quantiles: list[Quantile] = Field(default_factory=list)
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    # categorical
    categories: list[str] = Field(default_factory=list)
    category_frequencies: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureProfile:
        if self.kind == "numeric":
            if len(self.bin_frequencies) != len(self.bin_edges) + 1:
                raise ValueError(f"feature {self.name}: need len(bin_frequencies) == len(bin_edges) + 1")
            if any(b <= a for a, b in zip(self.bin_edges, self.bin_edges[1:], strict=False)):
                raise ValueError(f"feature {self.name}: bin_edges must be strictly increasing")
        elif len(self.categories) != len(self.category_frequencies):
            raise ValueError(f"feature {self.name}: need one frequency per category")
        return self


class ReferenceProfile(BaseModel):
    format_version: int = PROFILE_FORMAT_VERSION
    task: Literal["classification", "regression"]
    target: str
    rows: int = Field(ge=0, description="Rows of the training split the profile was built from.")
    features: list[FeatureProfile] = Field(description="In the order the model takes them.")
    classes: list[str] | None = Field(default=None, description="Class labels (classification).")
    class_frequencies: list[float] | None = None

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]
