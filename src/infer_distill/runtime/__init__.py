"""The machine a step computes on: CPU threads, the GPU guard, the fast path, progress lines."""
