import os

# Tests run on two cores next to each other (pytest -n 2): one thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
