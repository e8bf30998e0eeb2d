"""Mutants of src/smoothalign/losses/soft_labels.py (see ../mutation_audit.py)."""

TARGET = "src/smoothalign/losses/soft_labels.py"
TESTS = ["tests/test_soft_labels.py"]
# (name, the exact text replaced (it must occur once), its replacement)
MUTANTS = [
    (
        "marg_dim1",
        "torch.logsumexp(log_q, 0, keepdim=True)",
        "torch.logsumexp(log_q, 1, keepdim=True)",
    ),
    (
        "drop_marginal",
        "log_unnorm = torch.log(prior.to(log_q.dtype)) + log_q - log_marginal",
        "log_unnorm = torch.log(prior.to(log_q.dtype)) + log_q",
    ),
    (
        "marginal_plus",
        "log_unnorm = torch.log(prior.to(log_q.dtype)) + log_q - log_marginal",
        "log_unnorm = torch.log(prior.to(log_q.dtype)) + log_q + log_marginal",
    ),
    (
        "posterior_sumnorm",
        "return torch.softmax(log_unnorm, -1)",
        "return torch.softmax(log_unnorm, 0)",
    ),
    (
        "marg_fill_1",
        "masked_fill(torch.isneginf(log_marginal), 0.0)",
        "masked_fill(torch.isneginf(log_marginal), 1.0)",
    ),
    ("xlogx_ge", "pos = t > 0", "pos = t >= 0"),
    (
        "fkl_drop_entropy",
        "return (_xlogx(target) - target * log_q).sum(-1)",
        "return (- target * log_q).sum(-1)",
    ),
    (
        "fkl_mean",
        "return (_xlogx(target) - target * log_q).sum(-1)",
        "return (_xlogx(target) - target * log_q).mean(-1)",
    ),
    ("rkl_floor_gt", "if target_floor > 0:", "if target_floor > 1e-3:"),
    ("rkl_swap", "q * (log_q - log_t)", "q * (log_t - log_q)"),
    ("rkl_floor_range", "if not 0 <= target_floor < 1:", "if not 0 <= target_floor <= 1:"),
    ("jsd_m_no_half", "m = 0.5 * (q + target)", "m = (q + target)"),
    ("jsd_drop_kq", "return 0.5 * (kl_t + kl_q)", "return kl_t"),
    ("jsd_no_half", "return 0.5 * (kl_t + kl_q)", "return (kl_t + kl_q)"),
    ("detach_inverted", "if detach_target:", "if not detach_target:"),
    ("dist_tol", "bad = (sums - 1).abs() > tol", "bad = (sums - 1).abs() > 10 * tol"),
    ("dist_range", "check_in_range(t, name, 0.0, 1.0)", "pass"),
    (
        "dead_any",
        "dead = torch.isneginf(log_unnorm).all(-1)",
        "dead = torch.isneginf(log_unnorm).any(-1)",
    ),
    ("rkl_no_renorm", "        t = t / t.sum(-1, keepdim=True)\n", ""),
    ("no_detach_target", "target = target.detach()", "target = target"),
    ("rkl_floor_all", "t = target.clamp_min(target_floor)", "t = target + target_floor"),
    (
        "xlogx_nan_grad",
        "return torch.where(pos, t * torch.log(torch.where(pos, t, 1.0)), 0.0)",
        "return torch.where(pos, t * torch.log(t), 0.0)",
    ),
    ("rkl_live_all", "live = q > 0", "live = q >= 0"),
    (
        "jsd_no_clamp",
        "log_m = torch.log(m.clamp_min(torch.finfo(m.dtype).tiny))",
        "log_m = torch.log(m)",
    ),
    ("post_from_probs_no_log", "log_q = torch.log(model_probs)", "log_q = model_probs"),
]
# mutants that cannot change a result, so no test can catch them: why
EQUIVALENT = {
    "marg_fill_1": "that class's column is -inf in every row, so the fill never reaches the result",
}
