//! `adp`: ensembles trained with the Adaptive Diversity Promoting regulariser (Pang et al.,
//! ICML 2019) and the attacks that measure their robustness, on burn.
//!
//! The library follows the paper's structure: [`data`] loads image data sets with pixels in
//! `[0, 1]`, [`model`] builds the members and the ensemble, [`loss`] implements the objectives,
//! [`train`] runs Algorithm 1 and the peer defences, [`attack`] holds the adversaries, [`eval`]
//! measures clean and robust accuracy, [`report`] renders tables and plots, and [`paper`] chains them into the paper's
//! experiments ([`paper::reproduce`], [`paper::tables`], [`paper::figures`]) and into this
//! tool's own ([`paper::fidelity`], [`paper::peers`]). The library prints nothing: progress goes through [`progress`].
//!
//! The members' CPU convolution and batch norm are the kernels of the `adp-kernels` crate
//! (`adp_kernels::conv`, `adp_kernels::batch_norm`). The `cli` feature derives
//! `clap::ValueEnum` on the enums a command line chooses from; the `adp` binary (crate
//! `adp-cli`) turns it on, and nothing else in the library depends on clap.
//!
//! # The paper, equation by equation
//!
//! | paper | what | here |
//! |---|---|---|
//! | Eq. 1 | ensemble prediction F = (1/K) Σ_k F^k | [`model::EnsembleOutput::mean_probs`] |
//! | Eq. 2 | ensemble cross-entropy L_ECE = Σ_k −log F^k_y | [`loss::ensemble_cross_entropy`] |
//! | § 3.1 | ensemble entropy H(F) | [`loss::ensemble_entropy`] |
//! | Eq. 3-4 | ensemble diversity ED = det(M̃ᵀ_{\y} M̃_{\y}) of the normalised non-maximal predictions | [`loss::diversity_gram`], [`loss::log_det_spd`], [`loss::log_ensemble_diversity`] |
//! | Eq. 5 | L_ADP = L_ECE − α·H(F) − β·log(ED) | [`loss::adp_loss`], configured by [`loss::AdpConfig`] |
//! | Algorithm 1 | joint training of the K members, each frozen once it converges | [`train::train`], one step in [`train::train_step`] |
//! | Eq. 6-7, Theorem 2 | the optimum F_y of the constrained problem; α from a target confidence | [`loss::alpha_for_confidence`] |
//! | App. B.1, Eq. 9-10 | the JSD variant of the diversity term | [`loss::jensen_shannon_diversity`] |
//! | § 4.3, Table 4 | adversarial training with FGSM or PGD examples | [`train::adversarial`] |
//! | § 4.1-4.2, Tables 1-3, 5 | FGSM, BIM, PGD, MIM, JSMA, C&W, EAD | [`attack`] (one file each), run by [`eval::robust`] |
//! | Fig. 2 | t-SNE of the members' features | [`eval::feature_tsne`] |
//! | Fig. 3 | member-to-member transferability | [`eval::transfer::transfer_matrix`] |
//! | Fig. 4-5 | log ED of clean and adversarial inputs; detection by it | [`eval::ed_histogram::ed_histogram`], [`eval::detect::detect`] |
//!
//! Beyond the paper: AutoAttack's cascade (APGD-CE, APGD-T, FAB-T, Square) in [`attack`], the
//! indicators of a flawed evaluation in [`eval::indicators`], and GAL, DVERGE and TRS in
//! [`train::gal`], [`train::dverge`] and [`train::trs`], compared by [`paper::peers`].

pub mod attack;
pub mod autotune;
pub mod bench;
pub mod data;
pub use adp_kernels::denormals;
pub use adp_kernels::malloc;
pub use adp_kernels::threads;
pub mod device;
pub mod eval;
pub mod interop;
pub mod io;
pub mod lock;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod paper;
pub mod progress;
pub mod report;
pub mod sweep;
pub mod tensor;
pub mod train;
