"""Application tasks on locally generated real-world-like data: object detection and keyword
spotting. Each module builds its data set offline, trains a small model, and exposes
``problem(seed, batch) -> lowbit.tasks.Problem`` so ``lowbit report --task NAME`` measures it."""
