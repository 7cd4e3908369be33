//! `adp`: ensembles trained with the Adaptive Diversity Promoting regulariser (Pang et al.,
//! ICML 2019) and the attacks that measure their robustness, on burn.
//!
//! The library follows the paper's structure: [`data`] loads image data sets with pixels in
//! `[0, 1]`, [`model`] builds the members and the ensemble (Eq. 1), [`loss`] implements Eq. 2-5
//! and 7, [`train`] runs Algorithm 1, [`attack`] holds the adversaries, [`eval`] measures clean and
//! robust accuracy, [`report`] renders tables and [`reproduce`] chains them into the paper's
//! experiments ([`tables`]: Tables 1-5, [`experiments`]: the figures).

pub mod attack;
pub mod bench;
pub mod data;
pub mod device;
pub mod eval;
pub mod experiments;
pub mod fidelity;
pub mod interop;
pub mod io;
pub mod lock;
pub mod loss;
pub mod model;
pub mod peers;
pub mod progress;
pub mod report;
pub mod reproduce;
pub mod sweep;
pub mod tables;
pub mod tensor;
pub mod train;
