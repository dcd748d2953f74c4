"""Pure compute kernels: no Flask, no Redis, only a KernelContext to talk through."""
