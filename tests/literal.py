"""Deliberately literal, slow reference implementations of the official computations.

One image at a time, plain forward hooks written here (not neuronpath's), the clean forward
repeated wherever the official code repeats it, and separate autograd calls per alpha and,
where the official code does so, per replaced tensor.  Nothing here is shared with the engine.
"""

from __future__ import annotations

import torch


def sites(model):
    """The FFN activation modules of a Hugging Face ViT, in depth order."""
    return [
        m
        for n, m in model.named_modules()
        if n.endswith(("mlp.activation_fn", "intermediate.intermediate_act_fn"))
    ]


def clean_cls(model, x1):
    """Clean forward of one image (1, C, H, W): CLS post-GELU vector per layer, probabilities."""
    found = {}
    hooks = [
        site.register_forward_hook(
            lambda module, inputs, output, l=l: found.__setitem__(l, output[0, 0].detach().clone())
        )
        for l, site in enumerate(sites(model))
    ]
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


def official_layer_scores(model, x1, label, steps, path):
    """Official (docs/official-code.md#jas-search) candidate scores of layer t = len(path) given the
    path so far: left grid, per-tensor grad calls, the clean forward repeated as the official code
    does."""
    t = len(path)
    h, _ = clean_cls(model, x1)
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
    return (1 / steps) * (h[t] + value_prefix) * (grad_sum[t] + grad_prefix)


def jas_path(model, x1, label, steps):
    """Official (docs/official-code.md#jas-search) search loop for one image: signed argmax of the
    official scores per layer."""
    path = []
    for _ in range(len(sites(model))):
        path.append(int(torch.argmax(official_layer_scores(model, x1, label, steps, path))))
    return path


def reranked_jas_path(model, x1, label, steps, candidates=None):
    """Alg. 1 as written: at each layer the candidate w maximising JAS(P + {w}) -- each w's JAS
    computed on its own by ``set_jas`` -- over every neuron (``candidates=None``; ties to the
    lower index) or over the official top-``candidates`` (ties to the better official rank)."""
    points = [k / steps for k in range(steps)]
    weights = [1 / steps] * steps
    path = []
    for t in range(len(sites(model))):
        if candidates is None:
            pool = list(range(clean_cls(model, x1)[0][t].shape[0]))
        else:
            scores = official_layer_scores(model, x1, label, steps, path)
            pool = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:candidates]
        exact = [
            set_jas(
                model, x1, label, {**{l: [p] for l, p in enumerate(path)}, t: [w]}, points, weights
            )
            for w in pool
        ]
        path.append(pool[max(range(len(pool)), key=lambda i: (exact[i], -i))])
    return path


def activation_path(model, x1):
    h, _ = clean_cls(model, x1)
    return [int(torch.argmax(v)) for v in h]


def final_jas(model, x1, label, path, steps):
    """Official final JAS (docs/official-code.md#final-jas): every layer frozen but its path unit,
    scaled; one grad call per layer."""
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


def influence_pattern_path(model, x1, label, steps):
    """Official (docs/official-code.md#influence-pattern) for one image: input alpha_k * x (zero
    baseline in normalised space); for each layer t a separate forward that replaces layers <= t by
    their own collected values and takes dP/d(layer t); argmax of the mean over the steps."""
    num_layers = len(sites(model))
    grad_sum = None
    for k in range(steps):
        xk = (k / steps) * x1
        h, _ = clean_cls(model, xk)
        if grad_sum is None:
            grad_sum = [torch.zeros_like(v) for v in h]
        for t in range(num_layers):
            reps = {l: h[l].clone() for l in range(t)}
            reps[t] = h[t].clone().requires_grad_(True)
            p = logits_with_cls_replaced(model, xk, reps).softmax(-1)[label]
            (g,) = torch.autograd.grad(p, reps[t])
            grad_sum[t] += g
    return [int(torch.argmax(g / steps)) for g in grad_sum]


def knowledge_attribution(model, x1, label, steps):
    """Dai et al. style per-neuron IG: for each layer l and alpha, layer l's CLS vector is
    replaced by alpha * h_l (other layers normal); Attr_l = h_l * mean_k dP/du_l."""
    h, _ = clean_cls(model, x1)
    rows = []
    for l in range(len(h)):
        grad_sum = torch.zeros_like(h[l])
        for k in range(steps):
            u = ((k / steps) * h[l]).requires_grad_(True)
            p = logits_with_cls_replaced(model, x1, {l: u}).softmax(-1)[label]
            (g,) = torch.autograd.grad(p, u)
            grad_sum += g
        rows.append(h[l] * grad_sum / steps)
    return torch.stack(rows)


def topk_path(model, x1, label, steps, K, last_only):
    """Official (docs/official-code.md#topk-and-pruning) TopK loop for one image: all K chosen units
    of earlier layers scale with alpha; with last_only (the released code) only the K-th enters the
    two sums."""
    num_layers = len(sites(model))
    path = []
    for t in range(num_layers):
        h, _ = clean_cls(model, x1)
        grad_sum = [torch.zeros_like(h[l]) for l in range(t + 1)]
        for k in range(steps):
            alpha = k / steps
            reps = {}
            for l in range(t):
                u = h[l].clone()
                for j in path[l]:
                    u[j] = alpha * h[l][j]
                reps[l] = u.requires_grad_(True)
            reps[t] = (alpha * h[t]).requires_grad_(True)
            p = logits_with_cls_replaced(model, x1, reps).softmax(-1)[label]
            for l in range(t + 1):
                (g,) = torch.autograd.grad(p, reps[l], retain_graph=True)
                grad_sum[l] += g
        entering = [[path[l][-1]] if last_only else path[l] for l in range(t)]
        value_prefix = sum(h[l][j] for l in range(t) for j in entering[l])
        grad_prefix = sum(grad_sum[l][j] for l in range(t) for j in entering[l])
        score = (1 / steps) * (h[t] + value_prefix) * (grad_sum[t] + grad_prefix)
        path.append(sorted(range(len(score)), key=lambda i: (-float(score[i]), i))[:K])
    return path


def topk_final_jas(model, x1, label, path, steps, last_only):
    h, _ = clean_cls(model, x1)
    total_grad = 0.0
    entering = [[p[-1]] if last_only else p for p in path]
    for k in range(steps):
        alpha = k / steps
        reps = {}
        for l, chosen in enumerate(path):
            u = h[l].clone()
            for j in chosen:
                u[j] = alpha * h[l][j]
            reps[l] = u.requires_grad_(True)
        prob = logits_with_cls_replaced(model, x1, reps).softmax(-1)[label]
        for l in range(len(path)):
            (g,) = torch.autograd.grad(prob, reps[l], retain_graph=True)
            total_grad += sum(g[j] for j in entering[l])
    value = sum(h[l][j] for l in range(len(path)) for j in entering[l])
    return float((1 / steps) * value * total_grad)


# --- global-pool (MAE-style) models: the neuron spans all patch tokens (rows 1..T),
# docs/official-code.md#mae ---


def clean_patches(model, x1):
    found = {}
    hooks = [
        site.register_forward_hook(
            lambda module, inputs, output, l=l: found.__setitem__(l, output[0, 1:].detach().clone())
        )
        for l, site in enumerate(sites(model))
    ]
    try:
        with torch.no_grad():
            model(pixel_values=x1)
    finally:
        for h in hooks:
            h.remove()
    return [found[l] for l in range(len(found))]


def prob_with_patches_replaced(model, x1, replacements, label):
    def make(block):
        def hook(module, inputs, output):
            output = output.clone()
            output[0, 1:] = block
            return output

        return hook

    all_sites = sites(model)
    hooks = [all_sites[l].register_forward_hook(make(v)) for l, v in replacements.items()]
    try:
        return model(pixel_values=x1).softmax(-1)[0, label]
    finally:
        for h in hooks:
            h.remove()


def mae_jas_path(model, x1, label, steps):
    """Official (docs/official-code.md#mae) search: per-token product of the two sums, summed over
    tokens."""
    num_layers = len(sites(model))
    path = []
    for t in range(num_layers):
        h = clean_patches(model, x1)  # (T, n) per layer
        grad_sum = [torch.zeros_like(h[l]) for l in range(t + 1)]
        for k in range(steps):
            alpha = k / steps
            reps = {}
            for l in range(t):
                u = h[l].clone()
                u[:, path[l]] = alpha * h[l][:, path[l]]
                reps[l] = u.requires_grad_(True)
            reps[t] = (alpha * h[t]).requires_grad_(True)
            p = prob_with_patches_replaced(model, x1, reps, label)
            for l in range(t + 1):
                (g,) = torch.autograd.grad(p, reps[l], retain_graph=True)
                grad_sum[l] += g
        score = torch.zeros(h[t].shape[1], dtype=h[t].dtype)
        for tau in range(h[t].shape[0]):
            value_prefix = sum(h[l][tau, path[l]] for l in range(t))
            grad_prefix = sum(grad_sum[l][tau, path[l]] for l in range(t))
            score += (1 / steps) * (h[t][tau] + value_prefix) * (grad_sum[t][tau] + grad_prefix)
        path.append(int(torch.argmax(score)))
    return path


def mae_final_jas(model, x1, label, path, steps):
    """Official (docs/official-code.md#mae) final JAS: per-token product, summed over tokens,
    divided by the token count."""
    h = clean_patches(model, x1)
    tokens = h[0].shape[0]
    grad_sum = [torch.zeros(tokens, dtype=h[0].dtype) for _ in path]
    for k in range(steps):
        alpha = k / steps
        reps = {}
        for l, p in enumerate(path):
            u = h[l].clone()
            u[:, p] = alpha * h[l][:, p]
            reps[l] = u.requires_grad_(True)
        prob = prob_with_patches_replaced(model, x1, reps, label)
        for l, p in enumerate(path):
            (g,) = torch.autograd.grad(prob, reps[l], retain_graph=True)
            grad_sum[l] += g[:, p]
    total = 0.0
    for tau in range(tokens):
        value = sum(h[l][tau, p] for l, p in enumerate(path))
        grads = sum(grad_sum[l][tau] for l in range(len(path)))
        total += (1 / steps) * value * grads
    return float(total / tokens)


def mae_activation_path(model, x1):
    return [int(torch.argmax(v.sum(0))) for v in clean_patches(model, x1)]


# --- hierarchical (Swin-style) models: a neuron spans all of its block's tokens, and each
# layer's values and gradients are summed over its own tokens before the product ---


def clean_blocks(model, x1):
    """Every block's whole post-GELU FFN hidden state (T_l, n_l) for one image."""
    found = {}
    hooks = [
        site.register_forward_hook(
            lambda module, inputs, output, l=l: found.__setitem__(l, output[0].detach().clone())
        )
        for l, site in enumerate(sites(model))
    ]
    try:
        with torch.no_grad():
            model(pixel_values=x1)
    finally:
        for h in hooks:
            h.remove()
    return [found[l] for l in range(len(found))]


def prob_with_blocks_replaced(model, x1, replacements, label):
    def make(block):
        def hook(module, inputs, output):
            return block[None]

        return hook

    all_sites = sites(model)
    hooks = [all_sites[l].register_forward_hook(make(v)) for l, v in replacements.items()]
    try:
        return model(pixel_values=x1).logits.softmax(-1)[0, label]
    finally:
        for h in hooks:
            h.remove()


def pooled_jas_path(model, x1, label, steps):
    """Alg. 1 with whole-block neurons: S_t[i] = (sum_tok h_t[:, i] + sum_{l<t} sum_tok
    h_l[:, p_l]) * (1/m) sum_k (sum_tok g_t[:, i] + sum_{l<t} sum_tok g_l[:, p_l])."""
    path = []
    for t in range(len(sites(model))):
        h = clean_blocks(model, x1)
        grad_sum = [torch.zeros_like(h[l]) for l in range(t + 1)]
        for k in range(steps):
            alpha = k / steps
            reps = {}
            for l in range(t):
                u = h[l].clone()
                u[:, path[l]] = alpha * h[l][:, path[l]]
                reps[l] = u.requires_grad_(True)
            reps[t] = (alpha * h[t]).requires_grad_(True)
            p = prob_with_blocks_replaced(model, x1, reps, label)
            for l in range(t + 1):
                (g,) = torch.autograd.grad(p, reps[l], retain_graph=True)
                grad_sum[l] += g
        value_prefix = sum(h[l][:, path[l]].sum() for l in range(t))
        grad_prefix = sum(grad_sum[l][:, path[l]].sum() for l in range(t))
        score = (1 / steps) * (h[t].sum(0) + value_prefix) * (grad_sum[t].sum(0) + grad_prefix)
        path.append(int(torch.argmax(score)))
    return path


def pooled_final_jas(model, x1, label, path, steps):
    """(sum over layers and tokens of the path values) x (1/m) sum_k (the same of gradients)."""
    h = clean_blocks(model, x1)
    total_grad = 0.0
    for k in range(steps):
        alpha = k / steps
        reps = {}
        for l, p in enumerate(path):
            u = h[l].clone()
            u[:, p] = alpha * h[l][:, p]
            reps[l] = u.requires_grad_(True)
        prob = prob_with_blocks_replaced(model, x1, reps, label)
        for l, p in enumerate(path):
            (g,) = torch.autograd.grad(prob, reps[l], retain_graph=True)
            total_grad += g[:, p].sum()
    value = sum(h[l][:, p].sum() for l, p in enumerate(path))
    return float((1 / steps) * value * total_grad)


def pooled_activation_path(model, x1):
    return [int(torch.argmax(v.sum(0))) for v in clean_blocks(model, x1)]


def probs_with_cls_multiplied(model, x1, multipliers):
    """Class probabilities of one image with layer l's CLS post-GELU row multiplied by
    multipliers[l] during the forward (downstream recomputed)."""

    def make(vector):
        def hook(module, inputs, output):
            output = output.clone()
            output[0, 0] = output[0, 0] * vector
            return output

        return hook

    all_sites = sites(model)
    hooks = [all_sites[l].register_forward_hook(make(v)) for l, v in multipliers.items()]
    try:
        with torch.no_grad():
            return model(pixel_values=x1).logits.softmax(-1)[0]
    finally:
        for h in hooks:
            h.remove()


def prob_with_cls_multiplied(model, x1, label, multipliers):
    """P(label) of one image under :func:`probs_with_cls_multiplied`."""
    return float(probs_with_cls_multiplied(model, x1, multipliers)[label])


def lu_influence_path(model, x1, label, steps):
    """Lu et al.'s pattern influence (the paper's Eq. 9, Alg. 2) for one image, by plain loops:
    per alpha and per candidate neuron, one autograd call for each derivative of one neuron with
    respect to one neuron (or to alpha, for the first layer) and one for dF/d(the neuron); the
    greedy path, and I(x, P) of every layer's candidates."""
    n_layers = len(sites(model))

    def run(alpha, added=None, keep=None):
        """Forward of alpha * x with ``added`` = (layer, neuron, scalar) added at the CLS token;
        returns (logits, the CLS vectors of the layers in ``keep``)."""
        found = {}

        def make(l):
            def hook(module, inputs, output):
                if added is not None and added[0] == l:
                    output = output.clone()
                    output[0, 0, added[1]] = output[0, 0, added[1]] + added[2]
                found[l] = output[0, 0]
                return output

            return hook

        hooks = [s.register_forward_hook(make(l)) for l, s in enumerate(sites(model))]
        try:
            logits = model(pixel_values=alpha * x1).logits[0]
        finally:
            for h in hooks:
                h.remove()
        return logits, found

    def derivative(alpha_value, layer, neuron, previous):
        """d h_layer[neuron] / d (h_{layer-1}[previous], or alpha for the first layer)."""
        if layer == 0:
            alpha = torch.tensor(alpha_value, dtype=x1.dtype, requires_grad=True)
            _, h = run(alpha)
            return torch.autograd.grad(h[0][neuron], alpha)[0].item()
        e = torch.zeros((), dtype=x1.dtype, requires_grad=True)
        _, h = run(alpha_value, (layer - 1, previous, e))
        value = h[layer][neuron]
        if not value.requires_grad:
            return 0.0
        return torch.autograd.grad(value, e)[0].item()

    def output_gradient(alpha_value, layer, neuron):
        e = torch.zeros((), dtype=x1.dtype, requires_grad=True)
        logits, _ = run(alpha_value, (layer, neuron, e))
        return torch.autograd.grad(logits.softmax(-1)[label], e)[0].item()

    alphas = [k / steps for k in range(steps)]
    width = len(clean_cls(model, x1)[0][0])
    path, chain, scores_per_layer = [], [1.0] * steps, []
    for layer in range(n_layers):
        previous = path[-1] if path else None
        scores, steps_of = [], {}
        for w in range(width):
            total = 0.0
            for k, a in enumerate(alphas):
                d = derivative(a, layer, w, previous)
                steps_of[(w, k)] = d
                total += chain[k] * d * output_gradient(a, layer, w) / steps
            scores.append(total)
        best = max(range(width), key=lambda w: (scores[w], -w))
        path.append(best)
        chain = [chain[k] * steps_of[(best, k)] for k in range(steps)]
        scores_per_layer.append(scores)
    return path, scores_per_layer


def lu_influence_path_positions(model, x1, label, steps, positions):
    """:func:`lu_influence_path` for a neuron read at several token ``positions`` (a mean-
    pooled model): each (position, neuron) is a node of the graph, so a pattern through the
    neurons w^1 .. w^L sums over every choice of positions p_1 .. p_L the product

        dw^1_{p_1}/dalpha * prod_l dw^l_{p_l}/dw^{l-1}_{p_{l-1}} * dF/dw^L_{p_L}

    (Lu et al.'s sum over paths of the graph).  Every derivative of one node with respect to
    one node (or to alpha) is its own autograd call, on a forward shared by the derivatives
    that perturb the same node; the sum over positions is an explicit loop."""
    n_layers = len(sites(model))

    def run(alpha, added=None):
        """Forward of alpha * x with ``added`` = (layer, index, tensor) added to that layer's
        (tokens, n) output at ``index``; returns (logits, each layer's (tokens, n) output)."""
        found = {}

        def make(l):
            def hook(module, inputs, output):
                if added is not None and added[0] == l:
                    output = output.clone()
                    output[0][added[1]] = output[0][added[1]] + added[2]
                found[l] = output[0]
                return output

            return hook

        hooks = [s.register_forward_hook(make(l)) for l, s in enumerate(sites(model))]
        try:
            output = model(pixel_values=alpha * x1)
        finally:
            for h in hooks:
                h.remove()
        return getattr(output, "logits", output)[0], found

    def grad(value, leaf):
        if not value.requires_grad:
            return 0.0
        return torch.autograd.grad(value, leaf, retain_graph=True)[0].item()

    alphas = [k / steps for k in range(steps)]
    width = clean_patches(model, x1)[0].shape[1]
    tokens = len(positions) + 1
    path, scores_per_layer = [], []
    chain = [{p: 1.0 for p in positions} for _ in alphas]  # per alpha: position -> product
    for layer in range(n_layers):
        previous = path[-1] if path else None
        # dF / d h_layer[p, w] of every node, per alpha (one leaf per node)
        output_gradient = {}
        for k, a in enumerate(alphas):
            leaf = torch.zeros(tokens, width, dtype=x1.dtype, requires_grad=True)
            logits, _ = run(a, (layer, slice(None), leaf))
            (g,) = torch.autograd.grad(logits.softmax(-1)[label], leaf)
            for p in positions:
                for w in range(width):
                    output_gradient[(k, p, w)] = g[p, w].item()
        # d h_layer[p, w] / d (alpha, or h_{layer-1}[q, previous]) of every pair of nodes
        step = {}
        for k, a in enumerate(alphas):
            if layer == 0:
                alpha = torch.tensor(a, dtype=x1.dtype, requires_grad=True)
                _, h = run(alpha)
                for p in positions:
                    for w in range(width):
                        step[(k, p, w, None)] = grad(h[0][p, w], alpha)
                continue
            for q in positions:
                e = torch.zeros((), dtype=x1.dtype, requires_grad=True)
                _, h = run(a, (layer - 1, (q, previous), e))
                for p in positions:
                    for w in range(width):
                        step[(k, p, w, q)] = grad(h[layer][p, w], e)
        scores, chains = [], {}
        for w in range(width):
            total = 0.0
            for k in range(steps):
                reach = {}
                for p in positions:
                    if layer == 0:
                        reach[p] = step[(k, p, w, None)]
                    else:
                        reach[p] = sum(chain[k][q] * step[(k, p, w, q)] for q in positions)
                chains[(w, k)] = reach
                total += sum(reach[p] * output_gradient[(k, p, w)] for p in positions) / steps
            scores.append(total)
        best = max(range(width), key=lambda w: (scores[w], -w))
        path.append(best)
        chain = [chains[(best, k)] for k in range(steps)]
        scores_per_layer.append(scores)
    return path, scores_per_layer


# --- attention heads: multi-head attention written out by hand, each head's output edited
# before the output projection ---


def attention_modules(model):
    """Every block's attention module (q_proj, k_proj, v_proj, o_proj), in depth order."""
    return [m for _, m in model.named_modules() if all(hasattr(m, p) for p in ("q_proj", "o_proj"))]


def _heads_count(module):
    return getattr(module, "num_attention_heads", None) or module.num_heads


def literal_attention(module, hidden, attention_mask, edit):
    """One attention module by hand: per row and head, softmax(q k^T / sqrt(d) + bias) v, where
    bias is Swin's relative position bias plus its shifted-window mask (row r is window
    r mod windows), then ``edit(heads)`` on the heads' outputs (rows, tokens, H, d), then the
    output projection."""
    rows, tokens, _ = hidden.shape
    count, d = _heads_count(module), module.head_dim

    def project(linear):
        out = hidden @ linear.weight.T
        return (out if linear.bias is None else out + linear.bias).reshape(rows, tokens, count, d)

    q, k, v = project(module.q_proj), project(module.k_proj), project(module.v_proj)
    bias = module.relative_position_bias()[0] if hasattr(module, "relative_position_bias") else None
    heads = torch.zeros(rows, tokens, count, d, dtype=hidden.dtype)
    for r in range(rows):
        for h in range(count):
            scores = q[r, :, h] @ k[r, :, h].T * d**-0.5
            if bias is not None:
                scores = scores + bias[h]
            if attention_mask is not None:
                scores = scores + attention_mask[r % attention_mask.shape[0]]
            heads[r, :, h] = scores.softmax(-1) @ v[r, :, h]
    heads = edit(heads)
    return module.o_proj(heads.reshape(rows, tokens, count * d)), None


def logits_with_heads_edited(model, x1, edits):
    """Logits of one image, every attention module computed by :func:`literal_attention`,
    with ``edits[l]`` applied to block l's heads (identity where absent)."""
    modules = attention_modules(model)
    saved = [m.forward for m in modules]
    try:
        for l, m in enumerate(modules):
            edit = edits.get(l, lambda heads: heads)
            m.forward = lambda hidden, attention_mask=None, _m=m, _e=edit, **kw: literal_attention(
                _m, hidden, attention_mask, _e
            )
        return model(pixel_values=x1).logits[0]
    finally:
        for m, forward in zip(modules, saved):
            m.forward = forward


def clean_heads(model, x1):
    """Every block's heads' outputs (rows, tokens, H, d) for one image (rows: Swin's windows)."""
    found = {}

    def keep(l):
        def edit(heads):
            found[l] = heads.detach().clone()
            return heads

        return edit

    with torch.no_grad():
        logits_with_heads_edited(
            model, x1, {l: keep(l) for l in range(len(attention_modules(model)))}
        )
    return [found[l] for l in range(len(found))]


def head_set_jas(model, x1, label, heads, steps, positions, aligned=True):
    """JAS of a head set {layer: head} by a plain loop over the left grid: at every set layer the
    heads' outputs at ``positions`` are frozen at their clean values and the set head's slice is
    scaled by alpha; F's gradient w.r.t. that replaced tensor is read along the head's clean
    direction and its value is its norm (a head as a neuron along its own direction).  Aligned
    layers form the product per token (divided by the token count), others sum each layer over
    its rows and tokens first."""
    clean = clean_heads(model, x1)
    values, grads = {}, {l: 0.0 for l in heads}
    for l, h in heads.items():
        z = clean[l][:, positions, h]
        values[l] = z.norm(dim=-1)
    for k in range(steps):
        alpha = k / steps
        leaves = {}
        for l, h in heads.items():
            u = clean[l][:, positions].clone()
            u[:, :, h] = alpha * clean[l][:, positions, h]
            leaves[l] = u.requires_grad_(True)

        def replace(l):
            def edit(out):
                out = out.clone()
                out[:, positions] = leaves[l]
                return out

            return edit

        p = logits_with_heads_edited(model, x1, {l: replace(l) for l in heads}).softmax(-1)[label]
        found = torch.autograd.grad(p, [leaves[l] for l in heads])
        for (l, h), g in zip(heads.items(), found):
            z = clean[l][:, positions, h]
            direction = z / z.norm(dim=-1, keepdim=True)
            grads[l] = grads[l] + (g[:, :, h] * direction).sum(-1) / steps
    if aligned:
        value = sum(values[l] for l in heads)
        grad = sum(grads[l] for l in heads)
        return float((value * grad).sum() / len(positions))
    return float(sum(values[l].sum() for l in heads) * sum(grads[l].sum() for l in heads))


def mixed_set_jas(model, x1, label, units, steps, head_scale=1.0):
    """JAS of a set of neurons and heads of a CLS ViT, {block: ("neuron", i) or ("head", h)}, by
    a plain loop over the left grid: a neuron's block has its CLS FFN row frozen but for the
    neuron, scaled; a head's block has its heads' CLS outputs frozen but for the head, scaled;
    every other site runs normally.  Per kind, (sum of values) x (sum of alpha-averaged
    gradients), the products added; a head's value is ``head_scale`` x its norm and its
    gradient is read along its clean direction, per unit of that value."""
    h_ffn, _ = clean_cls(model, x1)
    z = [heads[0, 0] for heads in clean_heads(model, x1)]  # (H, d) at CLS per block
    value = {
        kind: sum(
            (h_ffn[l][i] if k == "neuron" else head_scale * z[l][i].norm())
            for l, (k, i) in units.items()
            if k == kind
        )
        for kind in ("neuron", "head")
    }
    grad = {"neuron": 0.0, "head": 0.0}
    for k in range(steps):
        alpha = k / steps
        leaves = {}
        for l, (kind, i) in units.items():
            u = (h_ffn[l] if kind == "neuron" else z[l]).clone()
            u[i] = alpha * u[i]
            leaves[l] = u.requires_grad_(True)

        def replace_heads(l):
            def edit(heads):
                heads = heads.clone()
                heads[0, 0] = leaves[l]
                return heads

            return edit

        def replace_ffn(vector):
            def hook(module, inputs, output):
                output = output.clone()
                output[0, 0] = vector
                return output

            return hook

        all_sites = sites(model)
        hooks = [
            all_sites[l].register_forward_hook(replace_ffn(leaves[l]))
            for l, (kind, _) in units.items()
            if kind == "neuron"
        ]
        try:
            edits = {l: replace_heads(l) for l, (kind, _) in units.items() if kind == "head"}
            p = logits_with_heads_edited(model, x1, edits).softmax(-1)[label]
        finally:
            for hook in hooks:
                hook.remove()
        found = torch.autograd.grad(p, [leaves[l] for l in units])
        for (l, (kind, i)), g in zip(units.items(), found):
            if kind == "neuron":
                grad["neuron"] = grad["neuron"] + g[i] / steps
            else:
                along = (g[i] * z[l][i] / z[l][i].norm()).sum() / head_scale
                grad["head"] = grad["head"] + along / steps
    return float(sum(value[kind] * grad[kind] for kind in value))


def lu_head_path(model, x1, label, steps):
    """:func:`lu_influence_path` over the heads of a CLS ViT, by plain loops: a head's value is
    the norm of its CLS output, a change of a head is a scalar e moving it along its current
    direction (z + e z/|z|), one autograd call per derivative of one head w.r.t. one head (or
    alpha)."""
    n_layers = len(attention_modules(model))

    def run(alpha, added=None):
        """alpha * x with ``added`` = (layer, head, e) moving that head at CLS; the CLS head
        outputs (H, d) of every layer and the logits."""
        found = {}

        def make(l):
            def edit(heads):
                if added is not None and added[0] == l:
                    heads = heads.clone()
                    z = heads[0, 0, added[1]].clone()
                    heads[0, 0, added[1]] = z + added[2] * z.detach() / z.detach().norm()
                found[l] = heads[0, 0]
                return heads

            return edit

        logits = logits_with_heads_edited(model, alpha * x1, {l: make(l) for l in range(n_layers)})
        return logits, found

    def derivative(a, layer, head, previous):
        if layer == 0:
            alpha = torch.tensor(a, dtype=x1.dtype, requires_grad=True)
            _, z = run(alpha)
            return torch.autograd.grad(z[0][head].norm(), alpha)[0].item()
        e = torch.zeros((), dtype=x1.dtype, requires_grad=True)
        _, z = run(a, (layer - 1, previous, e))
        return torch.autograd.grad(z[layer][head].norm(), e)[0].item()

    def output_gradient(a, layer, head):
        e = torch.zeros((), dtype=x1.dtype, requires_grad=True)
        logits, _ = run(a, (layer, head, e))
        return torch.autograd.grad(logits.softmax(-1)[label], e)[0].item()

    alphas = [k / steps for k in range(steps)]
    count = _heads_count(attention_modules(model)[0])
    path, chain, scores_per_layer = [], [1.0] * steps, []
    for layer in range(n_layers):
        previous = path[-1] if path else None
        scores, steps_of = [], {}
        for h in range(count):
            total = 0.0
            for k, a in enumerate(alphas):
                d = derivative(a, layer, h, previous)
                steps_of[(h, k)] = d
                total += chain[k] * d * output_gradient(a, layer, h) / steps
            scores.append(total)
        best = max(range(count), key=lambda h: (scores[h], -h))
        path.append(best)
        chain = [chain[k] * steps_of[(best, k)] for k in range(steps)]
        scores_per_layer.append(scores)
    return path, scores_per_layer
