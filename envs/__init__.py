"""ctxrl's built-in environment plugins (import name ``ctxrl_envs``).

Importing this package registers the ``ctxrl/...`` ids with gymnasium, so
``gymnasium.make("ctxrl/CartPole-v1", context={"masscart": 2.0})`` works after
``import ctxrl_envs`` (or ``gymnasium.make("ctxrl_envs:ctxrl/CartPole-v1", ...)``).
"""

from . import box2d, catch, classic_control

classic_control.register_gymnasium_ids()
box2d.register_gymnasium_ids()
catch.register_gymnasium_ids()
