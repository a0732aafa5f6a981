"""Deliberately literal, slow reference implementations of the official computations.

One image at a time, plain forward hooks written here (not neuronpath's), the clean forward
repeated wherever the official code repeats it, and separate autograd calls per alpha and,
where the official code does so, per replaced tensor.  Nothing here is shared with the engine.
"""

from __future__ import annotations

import torch


def sites(model):
    """The FFN activation modules of a Hugging Face ViT, in depth order."""
    return [m for n, m in model.named_modules()
            if n.endswith(("mlp.activation_fn", "intermediate.intermediate_act_fn"))]


def clean_cls(model, x1):
    """Clean forward of one image (1, C, H, W): CLS post-GELU vector per layer, probabilities."""
    found = {}
    hooks = [site.register_forward_hook(
        lambda module, inputs, output, l=l: found.__setitem__(l, output[0, 0].detach().clone()))
        for l, site in enumerate(sites(model))]
    try:
        with torch.no_grad():
            probs = model(pixel_values=x1).logits.softmax(-1)[0]
    finally:
        for h in hooks:
            h.remove()
    return [found[l] for l in range(len(found))], probs


def logits_with_cls_replaced(model, x1, replacements):
    """Logits of one image with layer l's CLS post-GELU row replaced by replacements[l]."""

    def make(vector):
        def hook(module, inputs, output):
            output = output.clone()
            output[0, 0] = vector
            return output
        return hook

    all_sites = sites(model)
    hooks = [all_sites[l].register_forward_hook(make(v)) for l, v in replacements.items()]
    try:
        return model(pixel_values=x1).logits[0]
    finally:
        for h in hooks:
            h.remove()


def jas_path(model, x1, label, steps):
    """Spec §2 search loop for one image: left grid, per-tensor grad calls, signed argmax."""
    num_layers = len(sites(model))
    path = []
    for t in range(num_layers):
        h, _ = clean_cls(model, x1)  # the official code repeats the clean forward per layer
        grad_sum = [torch.zeros_like(h[l]) for l in range(t + 1)]
        for k in range(steps):
            alpha = k / steps
            reps = {}
            for l in range(t):
                u = h[l].clone()
                u[path[l]] = alpha * h[l][path[l]]
                reps[l] = u.requires_grad_(True)
            reps[t] = (alpha * h[t]).requires_grad_(True)
            p = logits_with_cls_replaced(model, x1, reps).softmax(-1)[label]
            for l in range(t + 1):
                (g,) = torch.autograd.grad(p, reps[l], retain_graph=True)
                grad_sum[l] += g
        value_prefix = sum(h[l][path[l]] for l in range(t))
        grad_prefix = sum(grad_sum[l][path[l]] for l in range(t))
        score = (1 / steps) * (h[t] + value_prefix) * (grad_sum[t] + grad_prefix)
        path.append(int(torch.argmax(score)))
    return path


def activation_path(model, x1):
    h, _ = clean_cls(model, x1)
    return [int(torch.argmax(v)) for v in h]


def final_jas(model, x1, label, path, steps):
    """Spec §2 'Final JAS': every layer frozen but its path unit, scaled; one grad call per layer."""
    h, _ = clean_cls(model, x1)
    total_grad = 0.0
    for k in range(steps):
        alpha = k / steps
        reps = {}
        for l, p in enumerate(path):
            u = h[l].clone()
            u[p] = alpha * h[l][p]
            reps[l] = u.requires_grad_(True)
        prob = logits_with_cls_replaced(model, x1, reps).softmax(-1)[label]
        for l, p in enumerate(path):
            (g,) = torch.autograd.grad(prob, reps[l], retain_graph=True)
            total_grad += g[p]
    return float((1 / steps) * sum(h[l][p] for l, p in enumerate(path)) * total_grad)


def set_jas(model, x1, label, neurons, points, weights, logit=False):
    """JAS of a neuron set {layer: [indices]}: one forward and one autograd.grad per alpha."""
    h, probs = clean_cls(model, x1)
    total_grad = 0.0
    for alpha, weight in zip(points, weights):
        reps = {}
        for l, index in neurons.items():
            u = h[l].clone()
            u[index] = alpha * h[l][index]
            reps[l] = u.requires_grad_(True)
        logits = logits_with_cls_replaced(model, x1, reps)
        f = logits[label] if logit else logits.softmax(-1)[label]
        layers = list(reps)
        grads = torch.autograd.grad(f, [reps[l] for l in layers])
        total_grad += weight * sum(g[neurons[l]].sum() for l, g in zip(layers, grads))
    value = sum(h[l][index].sum() for l, index in neurons.items())
    return float(value * total_grad)
