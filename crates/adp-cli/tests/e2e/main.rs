//! The end-to-end tests of the `adp` binary and its library, one module per concern, in one
//! test binary: compiled as a binary of its own, each file instantiated burn's generic code
//! again (about 100 s of the two cores each). `tests/hostile.rs`, which measures the peak memory
//! of the processes it spawns, keeps a small binary of its own.

mod common;

mod adversarial_training;
mod backends;
mod experiments;
mod fidelity;
mod fuzz;
mod interop;
mod modern_attacks;
mod paper_attacks;
mod peers;
mod pipeline;
mod scale;
mod tables;
