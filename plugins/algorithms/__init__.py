"""Algorithm plugins: the batched torch trainers (PPO, DQN) and the Stable-Baselines3 adapter."""
