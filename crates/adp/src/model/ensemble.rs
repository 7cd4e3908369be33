//! An ensemble of K members whose prediction is the mean of their softmax outputs (Eq. 1).

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

use super::{Member, MemberConfig, moved};

/// K classifiers trained together.
#[derive(Module, Debug)]
pub struct Ensemble {
    /// The members F^1 … F^K.
    pub members: Vec<Member>,
}

/// The members' raw outputs on one batch.
#[derive(Debug, Clone)]
pub struct EnsembleOutput {
    /// Logits `[batch, K, L]`.
    pub logits: Tensor<3>,
}

impl EnsembleOutput {
    /// Each member's prediction F^k = softmax(z^k / T), `[batch, K, L]`.
    pub fn member_probs(&self, temperature: f64) -> Tensor<3> {
        softmax(self.logits.clone().div_scalar(temperature), 2)
    }

    /// The ensemble prediction F = (1/K) Σ_k F^k (Eq. 1), `[batch, L]`.
    pub fn mean_probs(&self) -> Tensor<2> {
        self.member_probs(1.0).mean_dim(1).squeeze_dim(1)
    }

    /// log F computed stably as logsumexp_k(log F^k) − log K, `[batch, L]`: the output that
    /// attacks differentiate, as in the official code's attacks on log(mean softmax).
    pub fn log_mean_probs(&self) -> Tensor<2> {
        let [_, k, _] = self.logits.dims();
        let lp = log_softmax(self.logits.clone(), 2);
        let max = lp.clone().max_dim(1).detach();
        let lse = (lp - max.clone()).exp().sum_dim(1).log() + max;
        lse.squeeze_dim::<2>(1).sub_scalar((k as f64).ln())
    }

    /// The mean of the members' logits, `[batch, L]` (an alternative target for attacks).
    pub fn mean_logits(&self) -> Tensor<2> {
        self.logits.clone().mean_dim(1).squeeze_dim(1)
    }
}

impl Ensemble {
    /// K freshly initialised members; each draws its own weights from the device's RNG.
    pub fn new(config: &MemberConfig, k: usize, device: &Device) -> Self {
        Self {
            members: (0..k).map(|_| Member::new(config, device)).collect(),
        }
    }

    /// Number of members K.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ensemble has no members (never true for a constructed ensemble).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Runs every member on `x` (pixels in `[0, 1]`); the logits are on the device of `x`.
    pub fn forward(&self, x: Tensor<4>) -> EnsembleOutput {
        EnsembleOutput {
            logits: Tensor::stack(self.on_members(x, Member::forward_local), 1),
        }
    }

    /// Every member's final hidden features on `x`, `[batch, K, D]` (members share one
    /// architecture, so one D): the inputs of the t-SNE panels of the paper's Fig. 2.
    pub fn features(&self, x: Tensor<4>) -> Tensor<3> {
        Tensor::stack(self.on_members(x, Member::features_local), 1)
    }

    /// Member k moved to `devices[k mod n]` (member-parallel placement): each member's forward
    /// pass, its gradients and its optimizer state then live on its own device, while the
    /// ensemble's inputs and outputs, and so the loss (Eq. 5), stay on the device of the input.
    /// Every device must have the autodiff setting of the model (a trainable model needs
    /// autodiff devices). The members become leaves of their devices' graphs (`fork`), so they
    /// train there.
    ///
    /// # Panics
    ///
    /// If `devices` is empty.
    pub fn place(self, devices: &[Device]) -> Self {
        assert!(!devices.is_empty(), "a placement needs at least one device");
        Self {
            members: self
                .members
                .into_iter()
                .enumerate()
                .map(|(k, m)| {
                    let to = &devices[k % devices.len()];
                    if m.device() == *to { m } else { m.fork(to) }
                })
                .collect(),
        }
    }

    /// `f` applied to each member on its own device, in three phases so that members on
    /// different GPUs overlap: the input moves to every device the members use, every member's
    /// work is queued on its device, and only then are the outputs brought back to the device of
    /// `x` (a move waits for its device to finish).
    fn on_members(
        &self,
        x: Tensor<4>,
        f: impl Fn(&Member, Tensor<4>) -> Tensor<2>,
    ) -> Vec<Tensor<2>> {
        let home = x.device();
        let mut moves: Vec<(Device, Tensor<4>)> = Vec::new();
        let inputs: Vec<Tensor<4>> = self
            .members
            .iter()
            .map(|m| {
                let own = m.device();
                if let Some((_, t)) = moves.iter().find(|(d, _)| *d == own) {
                    return t.clone();
                }
                let t = moved(x.clone(), &own);
                moves.push((own, t.clone()));
                t
            })
            .collect();
        let outputs: Vec<Tensor<2>> = (self.members.iter().zip(inputs))
            .map(|(m, x)| f(m, x))
            .collect();
        outputs.into_iter().map(|z| moved(z, &home)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelKind, tiny_config};

    #[test]
    fn features_stack_each_members_own_hidden_layer() {
        let device = crate::device::cpu();
        device.seed(3);
        let config = tiny_config(ModelKind::Resnet20, 3);
        let model = Ensemble::new(&config, 2, &device);
        let x = Tensor::<4>::random([2, 1, 8, 8], burn::tensor::Distribution::Default, &device);
        let f = model.features(x.clone());
        assert_eq!(f.dims(), [2, 2, 64]);
        for (k, member) in model.members.iter().enumerate() {
            let own = member.features(x.clone());
            let slice = f.clone().slice([0..2, k..k + 1, 0..64]).reshape([2, 64]);
            let diff = (own - slice).abs().max().into_scalar::<f32>();
            assert!(diff == 0.0, "member {k}: {diff}");
        }
        let gap = (model.members[0].features(x.clone()) - model.members[1].features(x))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(
            gap > 0.0,
            "two freshly initialised members gave equal features"
        );
    }
}
