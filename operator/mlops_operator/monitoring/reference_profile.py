"""The reference profile: what the training data looked like, feature by feature.

The trainer builds it from the training split and logs it to the MLflow run as the artifact
``reference_profile.json``; the model server loads it next to the model and compares live
traffic against it (drift). This module holds only the shared data contract, so that both
sides agree on one shape.

Numeric features are binned: ``bin_edges`` are the k-1 interior edges of k bins, the bins
being ``(-inf, e0], (e0, e1], ..., (e_{k-2}, +inf)`` (``numpy.searchsorted(edges, x,
side="left")`` gives the bin of x), ``bin_counts`` the number of non-null training values in
each bin and ``bin_frequencies`` the same as proportions. ``binning`` says how the edges were
chosen (see ``trainer/profile_builder.py``): ``quantiles`` (the distinct 1%..99% percentiles)
or ``values`` (a low-cardinality feature: one bin per distinct value, plus an empty bin below
the smallest and one above the largest). Categorical features list their categories with counts
and proportions; ``unlisted_count`` counts the non-null training values not listed (anything
else seen live counts as not listed too).

Counts, not only proportions, because the drift tests compare two samples: how sure the
reference is about a proportion depends on how many rows it was measured on.

Format versions: 2 adds ``binning``, ``bin_counts``, ``category_counts`` and ``unlisted_count``.
A format 1 profile (proportions only) still loads: its counts are rebuilt exactly from the
proportions and ``rows`` (each proportion was a count divided by the non-null rows), and its
decile edges are kept as they are. A profile with proportions but no usable ``rows``, or of a
format newer than this code knows, is refused with a message that says so. The proportions
stay in format 2 so that servers that only read format 1 can still load a new profile.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

PROFILE_ARTIFACT = "reference_profile.json"
PROFILE_FORMAT_VERSION = 2
Binning = Literal["quantiles", "values"]


class Quantile(BaseModel):
    q: float = Field(ge=0, le=1)
    value: float


class FeatureProfile(BaseModel):
    name: str
    kind: Literal["numeric", "categorical"]
    dtype: str = Field(description="The pandas dtype of the column in the training data.")
    null_fraction: float = Field(default=0.0, ge=0, le=1)
    # numeric
    binning: Binning = Field(
        default="quantiles",
        description="quantiles: edges at the distinct percentiles; values: one bin per distinct value.",
    )
    bin_edges: list[float] = Field(default_factory=list)
    bin_counts: list[int] | None = Field(
        default=None, description="Non-null training values per bin (format 2; rebuilt for format 1)."
    )
    bin_frequencies: list[float] = Field(default_factory=list)
    quantiles: list[Quantile] = Field(default_factory=list)
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    # categorical
    categories: list[str] = Field(default_factory=list)
    category_counts: list[int] | None = Field(
        default=None, description="Non-null training values per category (format 2; rebuilt for format 1)."
    )
    category_frequencies: list[float] = Field(default_factory=list)
    unlisted_count: int | None = Field(
        default=None, ge=0, description="Non-null training values of categories not listed."
    )

    @model_validator(mode="after")
    def _consistent(self) -> FeatureProfile:
        if self.kind == "numeric":
            bins = len(self.bin_edges) + 1
            if self.bin_frequencies and len(self.bin_frequencies) != bins:
                raise ValueError(f"feature {self.name}: need len(bin_frequencies) == len(bin_edges) + 1")
            if self.bin_counts is not None and len(self.bin_counts) != bins:
                raise ValueError(f"feature {self.name}: need len(bin_counts) == len(bin_edges) + 1")
            if any(b <= a for a, b in zip(self.bin_edges, self.bin_edges[1:], strict=False)):
                raise ValueError(f"feature {self.name}: bin_edges must be strictly increasing")
        else:
            if len(self.categories) != len(self.category_frequencies) and self.category_frequencies:
                raise ValueError(f"feature {self.name}: need one frequency per category")
            if self.category_counts is not None and len(self.category_counts) != len(self.categories):
                raise ValueError(f"feature {self.name}: need one count per category")
        if any(c < 0 for c in (*(self.bin_counts or ()), *(self.category_counts or ()))):
            raise ValueError(f"feature {self.name}: counts must be >= 0")
        return self

    @property
    def has_counts(self) -> bool:
        if self.kind == "numeric":
            return self.bin_counts is not None
        return self.category_counts is not None and self.unlisted_count is not None

    @property
    def reference_counts(self) -> list[int]:
        """Training counts in the server's slot order: the bins, or the categories then "not listed".

        Raises ValueError when the profile carries no counts (a bare ``FeatureProfile`` with
        proportions only; inside a :class:`ReferenceProfile` they are always filled in).
        """
        if not self.has_counts:
            raise ValueError(
                f"feature {self.name}: the profile has proportions but no counts; load it through "
                "ReferenceProfile, which rebuilds them from its rows"
            )
        if self.kind == "numeric":
            return list(self.bin_counts or ())
        return [*(self.category_counts or ()), self.unlisted_count or 0]

    def with_counts_from_rows(self, rows: int) -> FeatureProfile:
        """This feature with counts rebuilt from its proportions, for a profile of ``rows`` rows.

        Each proportion of a format 1 profile was a count over the feature's non-null values,
        ``rows * (1 - null_fraction)`` of them, so rounding recovers the counts exactly.
        """
        if self.has_counts:
            return self
        non_null = round(rows * (1.0 - self.null_fraction))
        if self.kind == "numeric":
            frequencies = self.bin_frequencies or ([1.0] + [0.0] * len(self.bin_edges))
            counts = [round(f * non_null) for f in frequencies]
            return self.model_copy(update={"bin_counts": counts, "bin_frequencies": list(frequencies)})
        counts = [round(f * non_null) for f in self.category_frequencies]
        return self.model_copy(
            update={"category_counts": counts, "unlisted_count": max(0, non_null - sum(counts))}
        )


class ReferenceProfile(BaseModel):
    format_version: int = PROFILE_FORMAT_VERSION
    task: Literal["classification", "regression"]
    target: str
    rows: int = Field(ge=0, description="Rows of the training split the profile was built from.")
    features: list[FeatureProfile] = Field(description="In the order the model takes them.")
    classes: list[str] | None = Field(default=None, description="Class labels (classification).")
    class_frequencies: list[float] | None = None

    @model_validator(mode="after")
    def _counts_for_every_feature(self) -> ReferenceProfile:
        if self.format_version > PROFILE_FORMAT_VERSION or self.format_version < 1:
            raise ValueError(
                f"reference profile format {self.format_version} is not supported "
                f"(this version reads formats 1 to {PROFILE_FORMAT_VERSION}); upgrade the model server"
            )
        missing = [f.name for f in self.features if not f.has_counts]
        if missing and self.rows <= 0:
            raise ValueError(
                f"reference profile: features {missing} have proportions but no counts, and rows is "
                f"{self.rows}, so their counts cannot be rebuilt; rebuild the profile by retraining"
            )
        if missing:
            self.features = [f.with_counts_from_rows(self.rows) for f in self.features]
        return self

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]
