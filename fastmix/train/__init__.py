"""Stage 3, train: recipes, speed tricks, optimizer and schedule, the loop, checkpoints, logs.
May import the base, fastmix.data and loaders (stage 2); never fastmix.perf."""
