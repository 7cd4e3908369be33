//! The experiments, each one command of `adp reproduce`: they chain training ([`crate::train`]),
//! evaluation ([`crate::eval`]) and reporting ([`crate::report`]) into the paper's results and
//! this tool's own.
//!
//! - [`reproduce`]: one comparison of ECE and ADP on a preset's budget (Table 2's MNIST rows);
//! - [`tables`]: Tables 1-5, with the published numbers beside the measured ones;
//! - [`figures`]: Figures 2-5 (t-SNE, transfer, detection, ensemble-diversity histogram);
//! - [`fidelity`]: the ablation grid of the official code's details;
//! - [`peers`]: ADP against GAL, DVERGE and TRS on the same members and budget.

pub mod fidelity;
pub mod figures;
pub mod peers;
pub mod reproduce;
pub mod tables;
