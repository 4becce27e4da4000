"""``gpumlp sweep show --plot DIR``: a study's optimisation history and its options' importances, with matplotlib."""
