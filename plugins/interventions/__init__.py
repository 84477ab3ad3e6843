"""Intervention plugins: training-time modifiers of the batched trainers (architecture,
loss terms, after-update operators)."""
