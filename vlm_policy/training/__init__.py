"""The training application on top of the policy core: configs, demonstrations, SFT, the PPO pipeline,
evaluation, callbacks, plots, CNN baselines and the ``vlm-cards`` command line."""
