"""Every backend-specific implementation, chosen in one place.

    selection        `Kernels` / `select(...)`: which implementation computes each operation
                     of the networks (the one place the choice is made; config.model.*_impl)
    matmul           convolutions as matrix products with hand-written backward passes
    batch_norm       train-mode batch norm with a hand-written backward pass
    compile_options  the XLA:CPU compiler option that keeps optimisation barriers
    host_malloc      opt-in glibc malloc settings for XLA:CPU (used by the benchmarks)

Importing the package imports nothing else, so `host_malloc` can be used before JAX.
"""
