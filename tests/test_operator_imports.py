"""The operator process stays small: what it imports to start, and what it builds at startup.

mlflow (~100 MB resident), scikit-learn, pandas and scipy.stats are for the model servers, the
trainer, MLflow calls and canary statistics, and the other subcommands (``serve``, ``sandbox``)
bring their own stacks; an operator whose resources need none of these must not pay for them. Checked in a fresh interpreter, since this test process imports everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys

def heavy():
    return sorted(
        m for m in sys.modules
        if m.split(".")[0] in {"mlflow", "sklearn", "pandas"}
        or m in {"scipy.stats", "mlops_operator.serving.asgi_app", "mlops_operator.sandbox.manager"}
    )

# What `mlops-operator run` loads before it starts kopf: the CLI builds the run subcommand.
from mlops_operator import cli
cli.build_parser("run").parse_args(["run"])
from mlops_operator.config import Settings
from mlops_operator.registry.mlflow_registry import Registry

# What the operator builds at startup (Collaborators.from_settings) holds a Registry too.
registry = Registry(Settings().mlflow_tracking_uri)
at_start = heavy()
# The first registry call imports mlflow (a stand-in here: the real import takes seconds).
import types
stand_in = types.ModuleType("mlflow")
stand_in.MlflowClient = lambda **kwargs: kwargs
sys.modules["mlflow"] = stand_in
assert registry._client == {"tracking_uri": registry.tracking_uri, "registry_uri": registry.tracking_uri}
print(json.dumps({"at_start": at_start, "after_first_use": heavy()}))
"""


def test_starting_the_operator_imports_no_ml_library_until_the_registry_is_used() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])

    assert loaded["at_start"] == []
    assert loaded["after_first_use"] == ["mlflow"]  # the probe sees mlflow once it is there
