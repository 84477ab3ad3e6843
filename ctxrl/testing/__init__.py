"""Contract test suites for plugin authors (a pytest plugin, loaded automatically).

Subclass a contract in your plugin's tests and name what you provide::

    from ctxrl.testing import (
        EnvContract,
        ExecutorContract,
        InterventionContract,
        StrategyContract,
        TransferMethodContract,
    )

    class TestMyEnv(EnvContract):
        env_name = "MyEnv"

    class TestMyStrategy(StrategyContract):
        strategy_name = "my-strategy"

    class TestMyIntervention(InterventionContract):
        intervention_name = "my-intervention"

    class TestMyTransferMethod(TransferMethodContract):
        transfer_method_name = "my-method"
        options = {"steps": 512}

    class TestMyExecutor(ExecutorContract):
        executor_name = "my-executor"

Every test of the contract then runs against your plugin, loaded through the entry points like
any user would load it. Fixtures: ``ctxrl_host`` (the loaded plugin host) and
``ctxrl_inline_plugin`` (register a plugin object for one test: its host is the process-wide
one until the test ends, so a contract whose ``*_spec`` fixture adds a plugin finds it).
"""

try:
    import pytest
except ImportError as exc:  # ctxrl installed without its testing extra
    raise ImportError(
        "ctxrl.testing (the contract suites) runs under pytest: pip install 'ctxrl[testing]'"
    ) from exc

# a failing contract shows the values it compared (pytest rewrites these modules' asserts
# even when they are imported from an editable install)
pytest.register_assert_rewrite(
    "ctxrl.testing.contracts",
    "ctxrl.testing.env_contract",
    "ctxrl.testing.executor_contract",
    "ctxrl.testing.interventions",
    "ctxrl.testing.transfer_contract",
    "ctxrl.testing.twin_contract",
)

from ctxrl.testing.contracts import AlgorithmContract, StrategyContract  # noqa: E402
from ctxrl.testing.env_contract import EnvContract  # noqa: E402
from ctxrl.testing.executor_contract import ExecutorContract  # noqa: E402
from ctxrl.testing.interventions import InterventionContract  # noqa: E402
from ctxrl.testing.transfer_contract import TransferMethodContract  # noqa: E402

__all__ = [
    "AlgorithmContract",
    "EnvContract",
    "ExecutorContract",
    "InterventionContract",
    "StrategyContract",
    "TransferMethodContract",
]
