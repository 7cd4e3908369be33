//! Helpers the attacks share: input gradients, restarts on the examples not yet broken, row
//! selection and replacement in a batch, and random target classes.

use burn::prelude::*;
use burn::tensor::{IndexingUpdateOp, TensorData};

use super::{AttackOutput, Classifier, Goal, Norms};

/// The gradient with respect to the input of `objective` summed over the batch, and the
/// objective's per-example value. `x` may live on a plain device: it is lifted to autodiff for
/// the backward pass, while the model's parameters stay constants. The gradient comes back in
/// the row-major layout of a fresh tensor ([`crate::tensor::standard_layout`]).
pub fn gradient_of(
    model: &dyn Classifier,
    x: &Tensor<4>,
    objective: impl Fn(&dyn Classifier, Tensor<4>) -> Tensor<1>,
) -> (Tensor<4>, Tensor<1>) {
    let (g, value, ()) = gradient_with(model, x, |m, x| (objective(m, x), ()));
    (g, value)
}

/// [`gradient_of`] for an objective that also returns a by-product of the same forward pass
/// (e.g. the log-probabilities that judge success), handed back as computed, still on the
/// autodiff device.
pub fn gradient_with<T>(
    model: &dyn Classifier,
    x: &Tensor<4>,
    objective: impl Fn(&dyn Classifier, Tensor<4>) -> (Tensor<1>, T),
) -> (Tensor<4>, Tensor<1>, T) {
    let xg = x
        .clone()
        .detach()
        .without_autodiff()
        .autodiff()
        .require_grad();
    let (value, extra) = objective(model, xg.clone());
    let grads = value.clone().sum().backward();
    let g = xg.grad(&grads).expect("the input takes part in the graph");
    let g = crate::tensor::standard_layout(g);
    (g, value.detach().without_autodiff(), extra)
}

/// The gradient of the goal's objective (−log F_y untargeted, log F_t targeted, on the
/// ensemble's log mean softmax) with respect to the input.
pub fn input_gradient(model: &dyn Classifier, x: &Tensor<4>, goal: &Goal) -> Tensor<4> {
    gradient_of(model, x, |m, x| goal.objective(m.log_probs(x))).0
}

/// Runs an attack `restarts` times (at least once), each time only on the examples that no
/// earlier attempt broke: `attempt` gets those examples' clean images, their goal and their
/// indices in the batch, and returns their adversarial images. Each example keeps the first
/// adversarial example that meets the goal, or the last attempt's where none does.
pub fn with_restarts(
    model: &dyn Classifier,
    goal: &Goal,
    original: &Tensor<4>,
    restarts: usize,
    mut attempt: impl FnMut(&Tensor<4>, &Goal, &Tensor<1, Int>) -> Tensor<4>,
) -> AttackOutput {
    let n = original.dims()[0];
    let mut adversarial = original.clone();
    let mut success = vec![false; n];
    for _ in 0..restarts.max(1) {
        let open: Vec<usize> = (0..n).filter(|&i| !success[i]).collect();
        if open.is_empty() {
            break;
        }
        let idx = row_indices(&open, &original.device());
        let x = original.clone().select(0, idx.clone());
        let sub_goal = goal.select(idx.clone());
        let adv = attempt(&x, &sub_goal, &idx).detach().without_autodiff();
        let met = sub_goal.achieved(model.log_probs(adv.clone()).detach().without_autodiff());
        adversarial = place_rows(adversarial, &open, adv);
        for (j, &i) in open.iter().enumerate() {
            success[i] = met[j];
        }
    }
    let norms = Norms::of(&adversarial, original);
    AttackOutput {
        adversarial,
        success,
        norms,
    }
}

/// The batch indices `rows` as an index tensor.
pub fn row_indices(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let m = rows.len();
    Tensor::from_data(
        TensorData::new(rows.iter().map(|&i| i as i64).collect(), [m]),
        device,
    )
}

/// `base` with its rows `rows` (in order) replaced by the rows of `values`.
pub fn place_rows(base: Tensor<4>, rows: &[usize], values: Tensor<4>) -> Tensor<4> {
    if rows.is_empty() {
        return base;
    }
    let n = base.dims()[0];
    let idx = row_indices(rows, &base.device());
    // Scatter into zeros, then take those rows.
    let placed = base
        .zeros_like()
        .select_assign(0, idx, values, IndexingUpdateOp::Add);
    let mut chosen = vec![false; n];
    for &i in rows {
        chosen[i] = true;
    }
    base.clone()
        .mask_where(example_mask(&chosen, &base), placed)
}

/// A per-example flag broadcast to the shape of `like` `[batch, C, H, W]`, for `mask_where`.
pub fn example_mask(flags: &[bool], like: &Tensor<4>) -> Tensor<4, Bool> {
    let n = flags.len();
    Tensor::<1, Bool>::from_data(TensorData::new(flags.to_vec(), [n]), &like.device())
        .reshape([n, 1, 1, 1])
        .expand(like.shape())
}

/// Reads a boolean tensor into a vector.
pub fn bools(t: Tensor<1, Bool>) -> Vec<bool> {
    t.into_data()
        .try_into_vec_as::<bool>()
        .expect("a boolean tensor")
}

/// Random target classes different from the true ones, drawn with `seed`.
pub fn random_targets(labels: &Tensor<1, Int>, num_classes: usize, seed: u64) -> Tensor<1, Int> {
    use rand::{Rng, SeedableRng};
    let y: Vec<i64> = labels
        .to_data()
        .try_into_vec_as::<i64>()
        .expect("int labels");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t: Vec<i64> = y
        .iter()
        .map(|&y| {
            let shift = rng.random_range(1..num_classes as i64);
            (y + shift) % num_classes as i64
        })
        .collect();
    let n = t.len();
    Tensor::from_data(TensorData::new(t, [n]), &labels.device())
}
