"""The machinery the batched torch trainers share: agent-stacked networks, the per-agent
optimizer, batched evaluation and the training loop. Algorithms live in
:mod:`ctxrl_plugins.algorithms`."""
