"""Advantage Weighted Matching (AWM) trainer for SD3/SD3.5 with LoRA.

Entry point: :func:`trainers.awm.recipe.train` (see ``README.md`` in this folder); what it reads:
:class:`trainers.awm.config.TrainerConfig`. Importing the package itself loads nothing: the
recipe (torch, diffusers) is imported only by who trains.
"""
