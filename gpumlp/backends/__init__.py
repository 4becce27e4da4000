"""Where the arrays live: the ``Backend`` written once against ``self.xp`` (base), numpy with its
BLAS and thread counts (cpu), CuPy with its kernels, cuBLAS binding and graph capture (cuda), and
the registry that turns ``"cpu"`` or ``"cuda:1"`` into a backend (registry)."""
