//! Memory of a training step: analytic components and the caching-allocator simulation.
pub mod allocator;
