"""Writes FILES incompressible files totalling MEGABYTES under ROOT, in
directories of 100 (dirNNN/fileNNNNN.bin), sizes Pareto-distributed (seeded,
so every run and every benchmark gets the same tree).

    python3 bench/gen_tree.py ROOT FILES MEGABYTES
"""
import os
import random
import sys

root, files, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
weights = [rng.paretovariate(1.2) for _ in range(files)]
scale = mb * 1024 * 1024 / sum(weights)
for i, w in enumerate(weights):
    d = os.path.join(root, "dir%03d" % (i // 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "file%05d.bin" % i), "wb") as f:
        f.write(os.urandom(max(1, int(w * scale))))
