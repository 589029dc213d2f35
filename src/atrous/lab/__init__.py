"""``atrous lab``: the exercises, run and reported from data generated in the run."""
