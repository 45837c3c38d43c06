//! CUDA backend: see issue 6 (work in progress, not in this build).
