"""What runs models over data: device and precision, loaders, the training step, the optimiser
and its schedule, the epoch loop, ``fit``, evaluation, distributed runs and flow pre-training."""
