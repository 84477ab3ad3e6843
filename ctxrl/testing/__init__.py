"""Contract test suites for plugin authors (a pytest plugin, loaded automatically).

Subclass a contract in your plugin's tests and name what you provide::

    from ctxrl.testing import EnvContract, StrategyContract

    class TestMyEnv(EnvContract):
        env_name = "MyEnv"

    class TestMyStrategy(StrategyContract):
        strategy_name = "my-strategy"

    class TestMyIntervention(InterventionContract):
        intervention_name = "my-intervention"

Every test of the contract then runs against your plugin, loaded through the entry points like
any user would load it. Fixtures: ``ctxrl_host`` (the loaded plugin host) and
``ctxrl_inline_plugin`` (register a plugin object for one test).
"""

from ctxrl.testing.contracts import AlgorithmContract, EnvContract, StrategyContract
from ctxrl.testing.interventions import InterventionContract

__all__ = ["AlgorithmContract", "EnvContract", "InterventionContract", "StrategyContract"]
