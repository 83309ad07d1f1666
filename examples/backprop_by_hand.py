"""Backpropagation by hand: one forward and one backward pass of a tiny net, every number shown.

The textbook network: 2 inputs → 3 sigmoid hidden units → 1 sigmoid output, mean squared
error on a batch of 4 examples (XOR). Each step calls the fbp layers' own `fwd` and `bwd`,
one layer at a time, prints what it computed, and puts jax.grad's numbers beside the
gradients. Then one step of gradient descent.

    python examples/backprop_by_hand.py
"""

import jax
import jax.numpy as jnp
import numpy as np

from fbp import layers as L
from fbp import losses

# float64, so the hand-written gradients and jax.grad's agree to ~1e-16, not ~1e-8
jax.config.update("jax_enable_x64", True)
np.set_printoptions(precision=4, suppress=True)


def show(label, value):
    value = np.asarray(value)
    text = np.array2string(value, prefix=" " * 30)
    print(f"  {label:<26}  {text}" if value.ndim else f"  {label:<26}  {float(value):.6f}")


def main(lr: float = 2.0, seed: int = 0) -> float:
    # The network, one layer at a time: z1 = x W1 + b1, a1 = σ(z1), z2 = a1 W2 + b2, a2 = σ(z2).
    hidden, sigma1, out, sigma2 = L.dense(3), L.sigmoid(), L.dense(1), L.sigmoid()
    net = L.serial(hidden, sigma1, out, sigma2)
    loss = losses.mse

    x = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = jnp.array([[0.0], [1.0], [1.0], [0.0]])
    rng = np.random.default_rng(seed)  # fixed random weights and biases
    p_hidden = {"w": jnp.asarray(rng.normal(0, 1, (2, 3))), "b": jnp.asarray(rng.normal(0, 0.5, 3))}
    p_out = {"w": jnp.asarray(rng.normal(0, 1, (3, 1))), "b": jnp.asarray(rng.normal(0, 0.5, 1))}
    params = (p_hidden, {}, p_out, {})  # the layout net.init(key, x.shape) would return

    print("Network: 2 inputs → dense(3) → sigmoid → dense(1) → sigmoid,  loss: mse\n")
    show("x (inputs)", x)
    show("y (targets)", y)
    show("W1", p_hidden["w"])
    show("b1", p_hidden["b"])
    show("W2", p_out["w"])
    show("b2", p_out["b"])

    # --- forward: each layer returns its output and what its backward will need (res) ----
    print("\nForward pass")
    z1, res_hidden = hidden.fwd(p_hidden, x)
    a1, res_sigma1 = sigma1.fwd({}, z1)
    z2, res_out = out.fwd(p_out, a1)
    a2, res_sigma2 = sigma2.fwd({}, z2)
    value, res_loss = loss.fwd(a2, y)
    show("z1 = x W1 + b1", z1)
    show("a1 = σ(z1)", a1)
    show("z2 = a1 W2 + b2", z2)
    show("a2 = σ(z2) (output)", a2)
    show("L = mean (a2 − y)²", value)

    # --- backward: from ∂L/∂L = 1 back to the inputs, each layer's own bwd ----------------
    print("\nBackward pass")
    g_a2 = loss.bwd(res_loss, jnp.ones_like(value))           # ∂L/∂a2 = 2(a2 − y)/N
    _, delta_out = sigma2.bwd({}, res_sigma2, g_a2)            # δ_out = ∂L/∂z2 = ∂L/∂a2 ⊙ σ′(z2)
    grads_out, g_a1 = out.bwd(p_out, res_out, delta_out)       # ∂W2 = a1ᵀδ_out, ∂a1 = δ_out W2ᵀ
    _, delta_hidden = sigma1.bwd({}, res_sigma1, g_a1)         # δ_hidden = ∂a1 ⊙ σ′(z1)
    grads_hidden, g_x = hidden.bwd(p_hidden, res_hidden, delta_hidden)
    show("∂L/∂a2 = 2(a2 − y)/N", g_a2)
    show("δ_out = ∂L/∂z2", delta_out)
    show("  = ∂L/∂a2 ⊙ a2(1−a2)", g_a2 * a2 * (1 - a2))
    show("δ_hidden = ∂L/∂z1", delta_hidden)
    show("  = (δ_out W2ᵀ) ⊙ σ′(z1)", (delta_out @ p_out["w"].T) * a1 * (1 - a1))
    show("∂L/∂x", g_x)

    # --- the same gradients from jax.grad, side by side ----------------------------------
    grads_auto = jax.grad(lambda p: loss(net.apply(p, x), y))(params)
    manual = {"W2 = a1ᵀ δ_out": grads_out["w"], "b2 = Σ δ_out": grads_out["b"],
              "W1 = xᵀ δ_hidden": grads_hidden["w"], "b1 = Σ δ_hidden": grads_hidden["b"]}
    auto = {"W2 = a1ᵀ δ_out": grads_auto[2]["w"], "b2 = Σ δ_out": grads_auto[2]["b"],
            "W1 = xᵀ δ_hidden": grads_auto[0]["w"], "b1 = Σ δ_hidden": grads_auto[0]["b"]}
    print("\nGradients: by hand, and by jax.grad")
    max_diff = 0.0
    for name in manual:
        diff = float(jnp.max(jnp.abs(manual[name] - auto[name])))
        max_diff = max(max_diff, diff)
        show(f"∂{name}", manual[name])
        show("  jax.grad", auto[name])
        print(f"  {'  max |difference|':<26}  {diff:.1e}")
    # the same again through the whole net at once: net.fwd, then net.bwd
    pred, res = net.fwd(params, x)
    grads_net, _ = net.bwd(params, res, loss.bwd(loss.fwd(pred, y)[1], jnp.ones_like(value)))
    net_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(grads_net), jax.tree_util.tree_leaves(grads_auto),
        strict=True))
    max_diff = max(max_diff, net_diff)
    print(f"  net.bwd (all layers at once) vs jax.grad: max |difference| {net_diff:.1e}")
    print(f"\nmax |hand-written − jax.grad| over all gradients: {max_diff:.1e}")

    # --- one step of gradient descent: w ← w − lr·g ------------------------------------------
    new_params = jax.tree_util.tree_map(lambda w, g: w - lr * g, params, grads_net)
    new_value = loss(net.apply(new_params, x), y)
    print(f"\nGradient descent, lr = {lr}:  w ← w − lr·∂L/∂w")
    show("W1 (new)", new_params[0]["w"])
    show("b1 (new)", new_params[0]["b"])
    show("W2 (new)", new_params[2]["w"])
    show("b2 (new)", new_params[2]["b"])
    print(f"  loss {float(value):.6f} → {float(new_value):.6f}")
    return max_diff


if __name__ == "__main__":
    main()
