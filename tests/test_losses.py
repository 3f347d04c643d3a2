"""Each loss against its REFERENCE.md formula computed a second way: numpy, float64, explicit loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetune import losses
from finetune.losses import (
    LOSSES,
    clip_loss,
    compute_loss,
    conclip_loss,
    make_loss_fn,
    negationclip_loss,
    negbench_mcq_loss,
    omni_absence_loss,
    omni_negclip_loss,
    omni_presence_loss,
    tripletclip_loss,
)

M, D, SCALE = 6, 16, 14.3


def features(seed: int, n: int = 5, m: int = M, d: int = D) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(m, d, generator=generator, dtype=torch.float64), dim=-1) for _ in range(n)]


# --- the second way: numpy loops ----------------------------------------------------------------

def np_ce(queries, keys, scale) -> float:
    """mean_i -log softmax_j(scale <q_i, k_j>)[i], one row at a time."""
    queries, keys = np.asarray(queries), np.asarray(keys)
    total = 0.0
    for i in range(len(queries)):
        logits = [scale * float(np.dot(queries[i], key)) for key in keys]
        top = max(logits)
        log_norm = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_norm - logits[i]
    return total / len(queries)


def np_cat(*xs):
    return np.concatenate([np.asarray(x) for x in xs])


def ref_clip(I, c, t):
    return 0.5 * (np_ce(I, c, t) + np_ce(c, I, t))


def ref_conclip(I, c, n, Ip, t, terms):
    all_terms = {1: np_ce(I, np_cat(c, n), t), 2: np_ce(c, np_cat(I, Ip), t), 3: np_ce(Ip, np_cat(n, c), t)}
    return sum(all_terms[k] for k in terms) / len(terms)


def ref_two_term(I, c, n, t):
    return 0.5 * (np_ce(I, np_cat(c, n), t) + np_ce(c, I, t))


def ref_presence(I, c, n, t):
    pairwise = 0.0
    for i in range(len(I)):
        s_true, s_false = t * np.dot(I[i], c[i]), t * np.dot(I[i], n[i])
        pairwise += -s_true + math.log(math.exp(s_true) + math.exp(s_false))
    pairwise /= len(I)
    return (np_ce(I, np_cat(c, n), t) + np_ce(c, I, t) + pairwise) / 3


def ref_absence(I, c, a, t, lambda_o, lambda_t, margin):
    hinge = np.mean([max(0.0, float(np.dot(c[i], a[i])) / (np.linalg.norm(c[i]) * np.linalg.norm(a[i])) + margin)
                     for i in range(len(I))])
    return ref_clip(I, a, t) + lambda_o * ref_clip(I, c, t) + lambda_t * hinge


def ref_triplet(I, c, n, Ip, t):
    def nc(images, true, false):
        return 0.5 * (np_ce(images, np_cat(true, false), t) + np_ce(true, images, t))
    return nc(I, c, n) + nc(Ip, n, c)


def close(value: torch.Tensor, expected: float):
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


# --- values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_clip_and_negationclip_match_formula(seed):
    I, c, a = [x.numpy() for x in features(seed, 3)]
    close(clip_loss(*map(torch.from_numpy, (I, c)), scale=SCALE), ref_clip(I, c, SCALE))
    close(negationclip_loss(*map(torch.from_numpy, (I, a)), scale=SCALE), ref_clip(I, a, SCALE))


@pytest.mark.parametrize("terms", [(1, 2, 3), (1,), (2,), (3,), (1, 3), (2, 3)])
def test_conclip_terms_match_formula(terms):
    I, c, n, Ip = features(2, 4)
    expected = ref_conclip(*(x.numpy() for x in (I, c, n, Ip)), SCALE, terms)
    close(conclip_loss(I, c, n, Ip, scale=SCALE, terms=terms), expected)


def test_conclip_without_distractor_is_the_two_term_form():
    I, c, n = features(3, 3)
    close(conclip_loss(I, c, n, scale=SCALE), ref_two_term(*(x.numpy() for x in (I, c, n)), SCALE))
    close(conclip_loss(I, c, n, scale=SCALE, terms=(1,)), np_ce(I.numpy(), np_cat(c, n), SCALE))
    with pytest.raises(ValueError, match="distractor"):
        conclip_loss(I, c, n, scale=SCALE, terms=(3,))
    with pytest.raises(ValueError, match="subset"):
        conclip_loss(I, c, n, scale=SCALE, terms=(4,))


def test_omni_losses_match_formula():
    I, c, n, a = features(4, 4)
    npI, npc, npn, npa = (x.numpy() for x in (I, c, n, a))
    close(omni_presence_loss(I, c, n, scale=SCALE), ref_presence(npI, npc, npn, SCALE))
    for lambda_o, lambda_t, margin in [(1.0, 1.0, 0.2), (0.3, 2.5, 0.5), (0.0, 0.0, 0.2)]:
        close(omni_absence_loss(I, c, a, scale=SCALE, lambda_o=lambda_o, lambda_t=lambda_t, margin=margin),
              ref_absence(npI, npc, npa, SCALE, lambda_o, lambda_t, margin))
    # the default margin is the authors' training setting 0.9 (their --margin), not the 0.2 of a signature
    close(omni_absence_loss(I, c, a, scale=SCALE), ref_absence(npI, npc, npa, SCALE, 1.0, 1.0, 0.9))
    close(omni_negclip_loss(I, c, n, a, scale=SCALE, lam=0.7),
          ref_presence(npI, npc, npn, SCALE) + 0.7 * ref_absence(npI, npc, npa, SCALE, 1.0, 1.0, 0.9))


def test_omni_hinge_is_active_only_above_minus_margin():
    I, c = features(5, 2)
    # a_i = -c_i: cos = -1 < -m, the hinge is 0 and the loss equals its two InfoNCE parts
    a = -c
    close(
        omni_absence_loss(I, c, a, scale=SCALE),
        ref_clip(I.numpy(), a.numpy(), SCALE) + ref_clip(I.numpy(), c.numpy(), SCALE),
    )
    a.requires_grad_(True)
    c2 = c.clone().requires_grad_(True)
    omni_absence_loss(I, c2, a, scale=SCALE, lambda_o=0.0, lambda_t=1.0).backward()
    hinge_free = c2.grad.clone()
    c3 = c.clone().requires_grad_(True)
    omni_absence_loss(I, c3, a.detach(), scale=SCALE, lambda_o=0.0, lambda_t=0.0).backward()
    assert torch.equal(hinge_free, c3.grad), "with cos < -m the hinge must add no gradient"
    # a_i = c_i: cos = 1, the hinge contributes 1 + m per row (m = 0.9 by default)
    close(
        omni_absence_loss(I, c, c, scale=SCALE, lambda_o=0.0, lambda_t=1.0) - negationclip_loss(I, c, scale=SCALE), 1.9
    )
    # cos(c, a) = -0.5 lies above -0.9 but below -0.2: the default hinge pays 0.4 per row, a 0.2 margin nothing
    e = torch.eye(D, dtype=torch.float64)
    c4, a4 = e[0].expand(M, D), (-0.5 * e[0] + math.sqrt(0.75) * e[1]).expand(M, D)
    hinge = omni_absence_loss(I, c4, a4, scale=SCALE, lambda_o=0.0) - negationclip_loss(I, a4, scale=SCALE)
    close(hinge, 0.4)
    close(
        omni_absence_loss(I, c4, a4, scale=SCALE, lambda_o=0.0, margin=0.2) - negationclip_loss(I, a4, scale=SCALE), 0.0
    )


def test_tripletclip_matches_formula():
    I, c, n, Ip = features(6, 4)
    close(tripletclip_loss(I, c, n, Ip, scale=SCALE), ref_triplet(*(x.numpy() for x in (I, c, n, Ip)), SCALE))


def test_scale_tensor_carries_gradient_and_matches_float():
    I, c = features(7, 2)
    logit_scale = torch.tensor(math.log(SCALE), dtype=torch.float64, requires_grad=True)
    loss = clip_loss(I, c, scale=logit_scale.exp())
    close(loss, ref_clip(I.numpy(), c.numpy(), SCALE))
    loss.backward()
    assert logit_scale.grad is not None and logit_scale.grad != 0


def test_registry_and_compute_loss_dispatch():
    I, c, n, a, Ip = features(8, 5)
    batch = {"image": I, "caption": c, "presence_negated": n, "absence_negated": a, "distractor": Ip}
    assert set(LOSSES) == {"clip", "conclip", "omni", "omni_presence", "omni_absence", "negationclip", "tripletclip",
                           "negbench_mcq", "mix"}
    close(compute_loss("omni_presence", batch, scale=SCALE), omni_presence_loss(I, c, n, scale=SCALE).item())
    close(compute_loss("omni_absence", batch, scale=SCALE, margin=0.5),
          omni_absence_loss(I, c, a, scale=SCALE, margin=0.5).item())
    close(compute_loss("clip", batch, scale=SCALE), clip_loss(I, c, scale=SCALE).item())
    close(compute_loss("conclip", batch, scale=SCALE), conclip_loss(I, c, n, Ip, scale=SCALE).item())
    close(
        compute_loss("conclip", {**batch, "distractor": None}, scale=SCALE), conclip_loss(I, c, n, scale=SCALE).item()
    )
    close(compute_loss("omni", batch, scale=SCALE, lam=0.5), omni_negclip_loss(I, c, n, a, scale=SCALE, lam=0.5).item())
    close(compute_loss("negationclip", batch, scale=SCALE), negationclip_loss(I, a, scale=SCALE).item())
    close(compute_loss("tripletclip", batch, scale=SCALE), tripletclip_loss(I, c, n, Ip, scale=SCALE).item())
    close(
        compute_loss("mix", batch, scale=SCALE, clip=0.5),
        losses.negation_mix_loss(I, c, n, a, Ip, scale=SCALE, clip=0.5).item(),
    )
    close(make_loss_fn("conclip", terms=(1,))(batch, SCALE), conclip_loss(I, c, n, Ip, scale=SCALE, terms=(1,)).item())
    with pytest.raises(ValueError, match="unknown loss"):
        compute_loss("negclip", batch, scale=SCALE)
    with pytest.raises(ValueError, match="distractor"):
        compute_loss("tripletclip", {**batch, "distractor": None}, scale=SCALE)
    with pytest.raises(ValueError, match="absence_negated"):
        compute_loss("omni", {"image": I, "caption": c, "presence_negated": n}, scale=SCALE)


# --- input checks ---------------------------------------------------------------------------------

def test_unnormalised_features_are_rejected_naming_the_argument():
    I, c, n, Ip = features(9, 4)
    with pytest.raises(ValueError, match="caption is not L2-normalised"):
        conclip_loss(I, c * 1.5, n, Ip, scale=SCALE)
    with pytest.raises(ValueError, match="distractor is not L2-normalised"):
        tripletclip_loss(I, c, n, Ip * 0.99, scale=SCALE)
    with pytest.raises(ValueError, match="image is not L2-normalised"):
        clip_loss(torch.randn(M, D), c, scale=SCALE)
    with pytest.raises(ValueError, match="absence_negated is not L2-normalised"):
        omni_absence_loss(I, c, torch.full((M, D), float("nan")), scale=SCALE)
    with pytest.raises(ValueError, match=r"\[M, d\]"):
        clip_loss(I[0], c[0], scale=SCALE)
    with pytest.raises(ValueError, match="same M"):
        clip_loss(I, c[:-1], scale=SCALE)
    # float32 and bf16 features that come out of F.normalize are accepted
    clip_loss(I.float(), c.float(), scale=SCALE)
    clip_loss(
        F.normalize(torch.randn(M, 512), dim=-1).bfloat16(),
        F.normalize(torch.randn(M, 512), dim=-1).bfloat16(),
        scale=SCALE,
    )


# --- gradients flow only where they should ---------------------------------------------------------

def grads(fn, tensors):
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    fn(*leaves).backward()
    return [leaf.grad for leaf in leaves]


def is_zero(grad):
    return grad is None or torch.count_nonzero(grad) == 0


def test_conclip_term_gradients():
    tensors = features(10, 4)
    g_I, g_c, g_n, g_Ip = grads(lambda I, c, n, Ip: conclip_loss(I, c, n, Ip, scale=SCALE, terms=(1,)), tensors)
    assert is_zero(g_Ip) and not is_zero(g_I) and not is_zero(g_c) and not is_zero(g_n)
    g_I, g_c, g_n, g_Ip = grads(lambda I, c, n, Ip: conclip_loss(I, c, n, Ip, scale=SCALE, terms=(2,)), tensors)
    assert is_zero(g_n) and not is_zero(g_Ip)
    g_I, g_c, g_n, g_Ip = grads(lambda I, c, n, Ip: conclip_loss(I, c, n, Ip, scale=SCALE, terms=(3,)), tensors)
    assert is_zero(g_I) and not is_zero(g_Ip)
    g_I, g_c, g_n, g_Ip = grads(lambda I, c, n, Ip: conclip_loss(I, c, n, scale=SCALE), tensors)
    assert is_zero(g_Ip)


def test_losses_ignore_features_they_do_not_read():
    I, c, n, a, Ip = features(11, 5)
    g = grads(
        lambda I, c, n, a, Ip: negationclip_loss(I, a, scale=SCALE) + 0 * (c.sum() + n.sum() + Ip.sum()),
        (I, c, n, a, Ip),
    )
    assert is_zero(g[1]) and is_zero(g[2]) and is_zero(g[4]) and not is_zero(g[3])
    g = grads(lambda I, c, n, a: omni_presence_loss(I, c, n, scale=SCALE) + 0 * a.sum(), (I, c, n, a))
    assert is_zero(g[3]) and not is_zero(g[2])
    g = grads(lambda I, c, n, a: omni_absence_loss(I, c, a, scale=SCALE) + 0 * n.sum(), (I, c, n, a))
    assert is_zero(g[2]) and not is_zero(g[3])


def test_pairwise_presence_term_gradient_by_finite_differences():
    """Autograd of the whole presence loss agrees with central finite differences."""
    I, c, n = features(12, 3, m=3, d=4)
    leaves = [t.clone().requires_grad_(True) for t in (I, c, n)]
    torch.autograd.gradcheck(lambda I, c, n: omni_presence_loss(I, c, n, scale=2.0), leaves, fast_mode=True)


def test_module_exports():
    for name in ("clip_loss", "conclip_loss", "omni_presence_loss", "omni_absence_loss", "omni_negclip_loss",
                 "negationclip_loss", "tripletclip_loss", "compute_loss", "make_loss_fn", "LOSSES"):
        assert hasattr(losses, name)


def test_negation_mix_is_the_weighted_sum_of_its_parts():
    from finetune.losses import negation_mix_loss

    image, caption, negated, absence, distractor = features(11)
    mixed = negation_mix_loss(image, caption, negated, absence, distractor, scale=SCALE,
                              conclip=0.5, negationclip=2.0, clip=1.5, tripletclip=0.25, absence_vs_presence=0.75,
                              scope_pair=1.25)
    # the second way: each part from the numpy loops
    conclip = (
        np_ce(image, np.vstack([caption, negated]), SCALE)
        + np_ce(caption, np.vstack([image, distractor]), SCALE)
        + np_ce(distractor, np.vstack([negated, caption]), SCALE)
    ) / 3
    negationclip = (np_ce(image, absence, SCALE) + np_ce(absence, image, SCALE)) / 2
    clip = (np_ce(image, caption, SCALE) + np_ce(caption, image, SCALE)) / 2
    nc = lambda i, t, f: 0.5 * (np_ce(i, np.vstack([t, f]), SCALE) + np_ce(t, i, SCALE))
    triplet = nc(image, caption, negated) + nc(distractor, negated, caption)
    absence_vs_presence = np_ce(image, np.vstack([absence, negated]), SCALE)
    scope_pair = np.mean([math.log(1 + math.exp(SCALE * float(image[i] @ negated[i] - image[i] @ absence[i])))
                          for i in range(M)])
    expected = (0.5 * conclip + 2.0 * negationclip + 1.5 * clip + 0.25 * triplet + 0.75 * absence_vs_presence
                + 1.25 * scope_pair)
    assert mixed.item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="every weight is 0"):
        negation_mix_loss(image, caption, negated, absence, scale=SCALE, conclip=0, negationclip=0, clip=0)
    # without distractors the CoN-CLIP part falls back to its two-term form
    two_term = negation_mix_loss(image, caption, negated, absence, scale=SCALE, negationclip=0, clip=0)
    assert two_term.item() == pytest.approx((np_ce(image, np.vstack([caption, negated]), SCALE)
                                             + np_ce(caption, image, SCALE)) / 2, rel=1e-9)


def ref_mcq(I, options, correct, t):
    """mean_i -log softmax_k(t <I_i, o_ik>)[correct_i], one image at a time."""
    total = 0.0
    for i in range(len(I)):
        logits = [t * float(np.dot(I[i], option)) for option in options[i]]
        top = max(logits)
        total += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[correct[i]]
    return total / len(I)


def test_negbench_mcq_loss_matches_a_loop_and_is_in_the_registry():
    generator = torch.Generator().manual_seed(13)
    I = F.normalize(torch.randn(M, D, generator=generator, dtype=torch.float64), dim=-1)
    options = F.normalize(torch.randn(M, 4, D, generator=generator, dtype=torch.float64), dim=-1)
    correct = torch.tensor([0, 3, 1, 2, 0, 1])
    expected = ref_mcq(I.numpy(), options.numpy(), correct.tolist(), SCALE)
    close(negbench_mcq_loss(I, options, correct, scale=SCALE), expected)
    close(compute_loss("negbench_mcq", {"image": I, "options": options, "correct": correct}, scale=SCALE), expected)
    # the right option pulled onto the image lowers the loss; options must be normalised and indices valid
    better = options.clone()
    better[torch.arange(M), correct] = I
    assert negbench_mcq_loss(I, better, correct, scale=SCALE) < negbench_mcq_loss(I, options, correct, scale=SCALE)
    with pytest.raises(ValueError, match="options is not L2-normalised"):
        negbench_mcq_loss(I, options * 2, correct, scale=SCALE)
    with pytest.raises(ValueError, match="option index"):
        negbench_mcq_loss(I, options, torch.tensor([0, 4, 1, 2, 0, 1]), scale=SCALE)
    with pytest.raises(ValueError, match="correct"):
        compute_loss("negbench_mcq", {"image": I, "options": options}, scale=SCALE)


def test_mix_sets_the_omni_parts_margin_and_lambdas():
    from finetune.losses import negation_mix_loss

    I, c, n, a = features(14, 4)
    npI, npc, npn, npa = (x.numpy() for x in (I, c, n, a))
    mixed = negation_mix_loss(I, c, n, a, scale=SCALE, conclip=0, negationclip=0, clip=0, omni=2.0,
                              omni_lam=0.3, omni_lambda_o=0.5, omni_lambda_t=2.0, omni_margin=0.4)
    expected = 2.0 * (ref_presence(npI, npc, npn, SCALE) + 0.3 * ref_absence(npI, npc, npa, SCALE, 0.5, 2.0, 0.4))
    close(mixed, expected)
    default = negation_mix_loss(I, c, n, a, scale=SCALE, conclip=0, negationclip=0, clip=0, omni=1.0)
    close(default, ref_presence(npI, npc, npn, SCALE) + ref_absence(npI, npc, npa, SCALE, 1.0, 1.0, 0.9))
