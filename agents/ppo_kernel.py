"""PPO's acting and minibatch update for small MLP actor-critics, each one compiled numba kernel.

The same math as `agents.ppo.ppo_loss` / `ppo_update` and `ActorCritic.act` (read those first: this is
their fast form), for the networks classic-control PPO uses: separate actor and critic MLPs (tanh or
ReLU) over a vector observation and a Categorical policy over Discrete actions. On a CPU a minibatch step
of those is ~40 tiny torch ops, each costing more in dispatch and autograd bookkeeping than in arithmetic
(~1.5 ms a step on this project's machine whether the minibatch holds 64 or 512 samples), and acting for 8
envs ~100 us. Here the forward pass, the PPO loss, its gradient written out by hand, the global
gradient-norm clip and Adam run in one compiled loop, the matrix products through BLAS (`np.dot`).

The parameters stay torch's: `flat_parameters` makes the actor's and critic's weights and biases views of
one flat buffer, which the kernels read and write in place (one array to pass instead of a dozen, and
one loop for Adam), and Adam's moments live in torch's optimizer state the same way. So checkpoints,
`--resume` and a torch update afterwards see no difference; the minibatch order comes from the same
`torch.randperm` draws and the sampling noise from the same `torch.rand` draws. What differs from torch:
float rounding (another BLAS, a rational tanh), so a seeded run takes a trajectory of its own.
tests/test_ppo_kernel.py checks acting, gradients and whole updates against torch and autograd.

Shapes: N envs or B samples of a minibatch, D observation features, A actions. A net of L hidden layers
has L + 1 linear layers (the last is its head); layer l's weight W is [out, in] as nn.Linear keeps it.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch


def _blas_on_one_thread() -> None:
    """np.dot in compiled code calls SciPy's OpenBLAS, which would split even these small products over
    threads (slower here, and its rounding would then depend on the core count): one thread, as the
    learner's torch uses for these nets. threadpoolctl's limit lasts for the process."""
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library numba calls, so the limit reaches it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


_blas_on_one_thread()

# Statistics of one minibatch, in this order (ppo_loss's names plus the gradient norm).
STAT_NAMES = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "grad_norm")

# tanh as a rational function (odd degree 13 over even degree 6: Eigen's fast float tanh) of its input
# clamped to +-7.9, where float32's tanh is 1: within 2.4e-7 of the exact tanh, and plain arithmetic that
# the compiler vectorises (8 floats an instruction), where numba's np.tanh calls libm per element: ~18 us
# for 1024 x 64 instead of ~170 us here. error_model="numpy" lets a float division be a division (Python's
# model checks each divisor for zero, and that branch alone stops the vectorisation).
@numba.njit(cache=True, fastmath=True, error_model="numpy")
def _tanh(z, out):
    """out = tanh(z) elementwise (both C-contiguous float32, the same shape)."""
    z, out = z.reshape(-1), out.reshape(-1)
    for i in range(z.size):
        x = min(max(z[i], np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
        x2 = x * x
        p = np.float32(-2.76076847742355e-16)
        p = p * x2 + np.float32(2.00018790482477e-13)
        p = p * x2 + np.float32(-8.60467152213735e-11)
        p = p * x2 + np.float32(5.12229709037114e-08)
        p = p * x2 + np.float32(1.48572235717979e-05)
        p = p * x2 + np.float32(6.37261928875436e-04)
        p = p * x2 + np.float32(4.89352455891786e-03)
        q = np.float32(1.19825839466702e-06)
        q = q * x2 + np.float32(1.18534705686654e-04)
        q = q * x2 + np.float32(2.26843463243900e-03)
        q = q * x2 + np.float32(4.89352518554385e-03)
        out[i] = x * p / q


@numba.njit(cache=True)
def _layer(flat, layout, index):
    """Layer `index`'s weight [out, in] and bias [out]: views of the flat buffer (layout row: offset, out,
    in)."""
    offset, n_out, n_in = layout[index, 0], layout[index, 1], layout[index, 2]
    weight = flat[offset : offset + n_out * n_in].reshape((n_out, n_in))
    return weight, flat[offset + n_out * n_in : offset + n_out * n_in + n_out]


@numba.njit(cache=True)
def _forward(x, flat, layout, first, last, relu, hs):
    """The MLP of layers first..last (the last is the head): hs[0] = x and each hidden layer's activations
    act(h W^T + b) into hs[1..]; returns the head's output h W^T + b."""
    hs[0][:] = x
    for k in range(last - first):
        weight, bias = _layer(flat, layout, first + k)
        z = np.dot(hs[k], weight.T) + bias
        if relu:
            hs[k + 1][:] = np.maximum(z, np.float32(0.0))
        else:
            _tanh(z, hs[k + 1])
    weight, bias = _layer(flat, layout, last)
    return np.dot(hs[last - first], weight.T) + bias


@numba.njit(cache=True)
def _backward(d_out, flat, grad, layout, first, last, relu, hs):
    """Gradients of the layers first..last into grad (the same layout as flat), given d_out = dloss/d(head
    output) [B, out] and the activations hs that _forward kept."""
    for index in range(last, first - 1, -1):
        weight, _ = _layer(flat, layout, index)
        d_weight, d_bias = _layer(grad, layout, index)
        h = hs[index - first]
        d_weight[:] = np.dot(d_out.T, h)
        d_bias[:] = d_out.sum(axis=0)
        if index > first:
            d_h = np.dot(d_out, weight)
            # tanh' = 1 - tanh^2; ReLU' = 1 where the unit was active.
            if relu:
                d_out = (d_h * (h > np.float32(0.0))).astype(np.float32)
            else:
                d_out = (d_h * (np.float32(1.0) - h * h)).astype(np.float32)


@numba.njit(cache=True)
def _activations(n, layout, first, last):
    """Buffers for the inputs of layers first..last: [n, in] each."""
    return [np.empty((n, layout[index, 2]), np.float32) for index in range(first, last + 1)]


@numba.njit(cache=True)
def _log_softmax(logits, out):
    """out = logits - logsumexp(logits) for one row, in float64 (no temporary arrays)."""
    top = logits[0]
    for v in logits:
        top = max(top, v)
    total = 0.0
    for v in logits:
        total += math.exp(v - top)
    lse = top + math.log(total)
    for j in range(logits.size):
        out[j] = logits[j] - lse


@numba.njit(cache=True)
def policy_step(obs, obs_mean, obs_var, obs_eps, obs_clip, flat, layout, actor_layers, relu, uniform, deterministic):
    """Acting for N envs: obs [N, D] float32; with obs_mean and obs_var [D] (float64, empty for none) the
    observations are normalised first as agents.networks.ObsNormalizer does, in float32; the actor is
    layers 0..actor_layers-1 of flat, the critic the rest; uniform [N, A] noise in [0, 1). Returns the
    action [N] (Gumbel-max over the log-probabilities, as agents.distributions.Categorical.sample draws
    it, or their argmax when deterministic), its log-probability [N] and V(s) [N]."""
    n, last = obs.shape[0], layout.shape[0] - 1
    x = obs
    if obs_mean.size:
        x = np.empty_like(obs)
        for j in range(obs.shape[1]):
            mean, std = np.float32(obs_mean[j]), np.float32(math.sqrt(obs_var[j] + obs_eps))
            for i in range(n):
                x[i, j] = min(max((obs[i, j] - mean) / std, -obs_clip), obs_clip)
    logits = _forward(x, flat, layout, 0, actor_layers - 1, relu, _activations(n, layout, 0, actor_layers - 1))
    values = _forward(x, flat, layout, actor_layers, last, relu, _activations(n, layout, actor_layers, last))
    action = np.empty(n, np.int64)
    log_prob = np.empty(n, np.float32)
    log_p = np.empty(logits.shape[1], np.float64)
    for i in range(n):
        _log_softmax(logits[i], log_p)
        best, best_score = 0, -np.inf
        for j in range(log_p.size):
            score = log_p[j]
            if not deterministic:
                score += -math.log(-math.log(max(uniform[i, j], 1e-20)))
            if score > best_score:
                best, best_score = j, score
        action[i], log_prob[i] = best, log_p[best]
    return action, log_prob, values[:, 0].copy()


@numba.njit(cache=True)
def ppo_epoch(
    x, actions, old_log_prob, old_value, advantages, returns, order, per_minibatch,
    flat, grad, exp_avg, exp_avg_sq, layout, actor_layers, relu,
    step, lr, beta1, beta2, eps, clip_coef, clip_vloss, ent_coef, vf_coef, norm_adv, max_grad_norm, stats,
):  # fmt: skip
    """One epoch of PPO minibatch steps over the samples in `order` (shuffled indices), in place.

    x [N, D] float32 (normalised observations), actions [N] int64, old_log_prob, old_value, advantages,
    returns [N] float32; flat the parameters (layout as in policy_step), grad a buffer of its size, exp_avg
    and exp_avg_sq Adam's moments in the same layout; step = Adam's step count before this epoch. Writes
    each minibatch's statistics (STAT_NAMES) into stats [minibatches, 6]. Returns the number of minibatches
    applied: fewer than asked when one's loss or gradient norm was not finite (that one is not applied;
    the caller undoes the whole update).
    """
    B = per_minibatch
    last = layout.shape[0] - 1
    actor_hs = _activations(B, layout, 0, actor_layers - 1)
    critic_hs = _activations(B, layout, actor_layers, last)
    num_actions = layout[actor_layers - 1, 1]
    d_logits = np.empty((B, num_actions), np.float32)
    d_value = np.empty((B, 1), np.float32)
    log_p = np.empty(num_actions, np.float64)
    for k in range(len(order) // B):
        idx = order[k * B : (k + 1) * B]
        xb = x[idx]
        logits = _forward(xb, flat, layout, 0, actor_layers - 1, relu, actor_hs)  # [B, A]
        value = _forward(xb, flat, layout, actor_layers, last, relu, critic_hs)[:, 0]  # [B]
        adv = advantages[idx].astype(np.float64)
        if norm_adv:
            # Per minibatch; torch's std is the unbiased one.
            adv = (adv - adv.mean()) / (math.sqrt(((adv - adv.mean()) ** 2).sum() / (B - 1)) + 1e-8)

        # The PPO objective as ppo_loss writes it, sample by sample, with its gradient beside it.
        pg_loss = v_loss = entropy_sum = kl_sum = clipped_count = 0.0
        for n in range(B):
            i, a = idx[n], actions[idx[n]]
            _log_softmax(logits[n], log_p)
            entropy = 0.0
            for j in range(num_actions):
                entropy -= math.exp(log_p[j]) * log_p[j]
            log_ratio = log_p[a] - old_log_prob[i]
            ratio = math.exp(log_ratio)
            kl_sum += (ratio - 1.0) - log_ratio
            clipped_count += 1.0 if abs(ratio - 1.0) > clip_coef else 0.0
            entropy_sum += entropy
            # Clipped surrogate max(-A r, -A clip(r)). torch.max splits the gradient evenly where both
            # sides are equal; clamp passes it where r lies in [1 - eps, 1 + eps], bounds included.
            surr1 = -adv[n] * ratio
            surr2 = -adv[n] * min(max(ratio, 1.0 - clip_coef), 1.0 + clip_coef)
            pg_loss += max(surr1, surr2)
            w1 = 1.0 if surr1 > surr2 else (0.5 if surr1 == surr2 else 0.0)
            in_range = 1.0 if 1.0 - clip_coef <= ratio <= 1.0 + clip_coef else 0.0
            d_log_p_a = (w1 * -adv[n] + (1.0 - w1) * -adv[n] * in_range) * ratio / B
            # d log p(a) / d logits = onehot(a) - p;  d H / d logits = -p (log p + H);  the loss has -c H.
            for j in range(num_actions):
                p = math.exp(log_p[j])
                d_logits[n, j] = -d_log_p_a * p + ent_coef / B * p * (log_p[j] + entropy)
            d_logits[n, a] += d_log_p_a
            # Value loss 0.5 (V - R)^2, PPO2's clipped form when asked (the same gradient rules).
            v, r = value[n], returns[i]
            if clip_vloss:
                v_clipped = old_value[i] + min(max(v - old_value[i], -clip_coef), clip_coef)
                sq1, sq2 = (v - r) ** 2, (v_clipped - r) ** 2
                v_loss += 0.5 * max(sq1, sq2)
                wv = 1.0 if sq1 > sq2 else (0.5 if sq1 == sq2 else 0.0)
                v_in_range = 1.0 if -clip_coef <= v - old_value[i] <= clip_coef else 0.0
                d_value[n, 0] = vf_coef / B * (wv * (v - r) + (1.0 - wv) * (v_clipped - r) * v_in_range)
            else:
                v_loss += 0.5 * (v - r) ** 2
                d_value[n, 0] = vf_coef / B * (v - r)
        pg_loss, v_loss, entropy_loss = pg_loss / B, v_loss / B, entropy_sum / B
        _backward(d_logits, flat, grad, layout, 0, actor_layers - 1, relu, actor_hs)
        _backward(d_value, flat, grad, layout, actor_layers, last, relu, critic_hs)

        # clip_grad_norm_ over all gradients: scaled by max_norm / (norm + 1e-6) where that is below 1.
        squared = 0.0
        for g in grad:
            squared += float(g) * float(g)
        grad_norm = math.sqrt(squared)
        loss = pg_loss - ent_coef * entropy_loss + vf_coef * v_loss
        stats[k, 0], stats[k, 1], stats[k, 2] = pg_loss, v_loss, entropy_loss
        stats[k, 3], stats[k, 4], stats[k, 5] = kl_sum / B, clipped_count / B, grad_norm
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return k
        scale = min(1.0, max_grad_norm / (grad_norm + 1e-6))

        # torch.optim.Adam's step (no weight decay, no amsgrad), bias-corrected.
        t = step + k + 1
        step_size = lr / (1.0 - beta1**t)
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
        for j in range(flat.size):
            g = grad[j] * scale
            exp_avg[j] += (1.0 - beta1) * (g - exp_avg[j])
            exp_avg_sq[j] = beta2 * exp_avg_sq[j] + (1.0 - beta2) * g * g
            flat[j] -= step_size * exp_avg[j] / (math.sqrt(exp_avg_sq[j]) / bias_correction2_sqrt + eps)
    return len(order) // B


def _kernel_layers(agent: torch.nn.Module) -> list[torch.nn.Linear]:
    """The actor's linear layers (its MLP, then the policy head), then the critic's (MLP, value head)."""
    return [*agent.actor_body.layers, agent.policy_head.linear, *agent.critic_body.layers, agent.value_head]


def _kernel_parameters(agent: torch.nn.Module) -> list[torch.Tensor]:
    """W and b of each of _kernel_layers, in that order: the order of the flat buffer."""
    return [p for layer in _kernel_layers(agent) for p in (layer.weight, layer.bias)]


def _as_views_of_one_buffer(tensors: list[torch.Tensor]) -> np.ndarray:
    """A flat float32 buffer (as numpy) that `tensors` become views of, in order (their values copied in,
    each tensor's .data pointed at its part)."""
    flat = torch.empty(sum(t.numel() for t in tensors))
    offset = 0
    with torch.no_grad():
        for t in tensors:
            part = flat[offset : offset + t.numel()].view_as(t)
            part.copy_(t)
            t.data = part
            offset += t.numel()
    return flat.numpy()


def _remembered_buffer(owner: object, name: str, tensors: list[torch.Tensor]) -> tuple | None:
    """What _remember kept on owner under name, if `tensors` (the ones that should be views of its buffer)
    still sit where they sat then: a copy of the module, or optimizer state loaded afresh, puts them
    elsewhere, and the buffer must be made again."""
    kept = owner.__dict__.get(name)
    if kept is not None and all(t.data_ptr() == p for t, p in zip(tensors, kept[1], strict=True)):
        return kept[2:]
    return None


def _remember(owner: object, name: str, tensors: list[torch.Tensor], *values) -> tuple:
    owner.__dict__[name] = (tensors, [t.data_ptr() for t in tensors], *values)
    return values


def flat_parameters(agent: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, int]:
    """(flat, layout, actor_layers): the actor's then the critic's weights and biases (W, b per layer) as
    one float32 buffer the torch parameters are views of (made on first use, and again after the module
    was copied); layout [layers, 3] = (offset, out, in) per layer; the first actor_layers are the actor's."""
    # The parameters as remembered (gathering them from the layers would cost acting ~30%): a deep copy
    # of the module copies this list too, pointing at the copy's own Parameter objects, whose data then
    # sit elsewhere; moving or loading data in place keeps the objects. Only Parameter objects swapped
    # for new ones (load_state_dict(assign=True)) would go unseen: nothing here does that.
    kept = agent.__dict__.get("_kernel_parameters")
    if kept is not None and (found := _remembered_buffer(agent, "_kernel_parameters", kept[0])) is not None:
        return found
    layers = _kernel_layers(agent)
    params = _kernel_parameters(agent)
    layout, offset = np.empty((len(layers), 3), np.int64), 0
    for index, layer in enumerate(layers):
        layout[index] = offset, layer.out_features, layer.in_features
        offset += layer.weight.numel() + layer.bias.numel()
    flat = _as_views_of_one_buffer(params)
    return _remember(agent, "_kernel_parameters", params, flat, layout, len(agent.actor_body.layers) + 1)


def kernel_act(agent: torch.nn.Module, obs: dict[str, torch.Tensor], generator: torch.Generator | None,
               deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """PolicyValueNet.act's (action, log-probability, value) for a kernel_compatible ActorCritic, through
    policy_step. The noise is drawn as Categorical.sample draws it (torch.rand from `generator`), so a
    worker's samples still depend on its seed alone."""
    flat, layout, actor_layers = flat_parameters(agent)
    raw = obs[agent.obs_key]
    x = np.ascontiguousarray(raw.numpy().reshape(raw.shape[0], -1), dtype=np.float32)
    normalizer = agent.obs_normalizer
    if normalizer is None:
        mean = var = _NO_STATISTICS
        eps = clip = 0.0
    else:
        mean, var, eps, clip = normalizer.mean.numpy().reshape(-1), normalizer.var.numpy().reshape(-1), normalizer.eps, normalizer.clip
    num_actions = int(layout[actor_layers - 1, 1])
    uniform = _NO_NOISE if deterministic else torch.rand((x.shape[0], num_actions), generator=generator).numpy()
    action, log_prob, value = policy_step(x, mean, var, eps, clip, flat, layout, actor_layers,
                                          agent.actor_body.activation is torch.relu, uniform, deterministic)  # fmt: skip
    return torch.from_numpy(action), torch.from_numpy(log_prob), torch.from_numpy(value)


_NO_STATISTICS = np.empty(0, np.float64)
_NO_NOISE = np.empty((0, 0), np.float32)


def ppo_kernel_update(
    agent: torch.nn.Module,
    optimizer: torch.optim.Adam,
    batch: dict,
    hp,
    generator: torch.Generator,
) -> dict[str, float]:
    """agents.ppo.ppo_update for a kernel_compatible ActorCritic, through ppo_epoch: the same minibatch
    order (one torch.randperm per epoch from `generator`), target-KL stop and statistics. Raises
    agents.ppo.NonFiniteUpdate as ppo_update does; the parameters are then part-updated (the caller undoes)."""
    from agents.ppo import NonFiniteUpdate

    group = optimizer.param_groups[0]
    if len(optimizer.param_groups) != 1 or group["weight_decay"] or group["amsgrad"] or group["maximize"]:
        raise ValueError("ppo_kernel_update implements plain Adam over one parameter group")
    beta1, beta2 = group["betas"]
    flat, layout, actor_layers = flat_parameters(agent)
    params = _kernel_parameters(agent)
    for p in params:
        if not optimizer.state[p]:  # torch makes Adam's state at its first step: the same here
            optimizer.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    moments = [optimizer.state[p][name] for name in ("exp_avg", "exp_avg_sq") for p in params]
    found = _remembered_buffer(optimizer, "_kernel_moments", moments)
    if found is None:
        found = _remember(optimizer, "_kernel_moments", moments, _as_views_of_one_buffer(moments))
    # Both moments in one buffer: exp_avg's half, then exp_avg_sq's.
    exp_avg, exp_avg_sq = found[0][: flat.size], found[0][flat.size :]
    grad = np.empty_like(flat)
    with torch.inference_mode():  # the normalised observations, once for the whole update
        x = np.ascontiguousarray(agent._encode(batch["obs"]).numpy(), dtype=np.float32)
    fields = [np.ascontiguousarray(batch[k].numpy()) for k in ("log_probs", "values", "advantages", "returns")]
    actions = batch["actions"].numpy().astype(np.int64)
    per_minibatch = actions.shape[0] // hp.num_minibatches
    relu = agent.actor_body.activation is torch.relu
    step = float(optimizer.state[params[0]]["step"])
    history: list[np.ndarray] = []
    for _epoch in range(hp.update_epochs):
        if hp.num_minibatches == 1:
            order = np.arange(actions.shape[0])
        else:
            order = torch.randperm(actions.shape[0], generator=generator).numpy()[: hp.num_minibatches * per_minibatch]
        stats = np.zeros((hp.num_minibatches, len(STAT_NAMES)))
        applied = ppo_epoch(
            x, actions, *fields, order, per_minibatch, flat, grad, exp_avg, exp_avg_sq, layout, actor_layers, relu,
            step, group["lr"], beta1, beta2, group["eps"], hp.clip_coef, hp.clip_vloss, hp.ent_coef, hp.vf_coef,
            hp.norm_adv, hp.max_grad_norm, stats,
        )  # fmt: skip
        step += applied
        for p in params:
            optimizer.state[p]["step"].fill_(step)
        if applied < hp.num_minibatches:
            raise NonFiniteUpdate(f"loss or gradient norm not finite (gradient norm {stats[applied, 5]})")
        history.append(stats)
        # Target-KL early stop, on the epoch's last minibatch as ppo_update does.
        if hp.target_kl is not None and stats[-1, 3] > hp.target_kl:
            break
    mean_stats = dict(zip(STAT_NAMES, np.concatenate(history).mean(axis=0).tolist(), strict=True))
    mean_stats["epochs"] = float(len(history))
    return mean_stats
