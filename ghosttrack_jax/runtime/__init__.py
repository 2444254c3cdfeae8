"""Libraries every stage uses: output paths, atomic file io, metric writer, checkpoints, processes and
the mapping of stacked layers onto devices."""
