"""Mutants of src/smoothalign/smoothing/votes.py (see ../mutation_audit.py)."""

TARGET = "src/smoothalign/smoothing/votes.py"
TESTS = ["tests/test_votes.py"]
# (name, the exact text replaced (it must occur once), its replacement)
MUTANTS = [
    ("laplace_k1", "return (v + 1) / (k + 2)", "return (v + 1) / (k + 1)"),
    ("laplace_none", "return (v + 1) / (k + 2)", "return v / k"),
    (
        "support_grid",
        "support = torch.arange(1, grid + 1, dtype=torch.float64) / (grid + 1)",
        "support = torch.arange(1, grid + 1, dtype=torch.float64) / (grid + 2)",
    ),
    ("em_no_share", "weights = share @ post", "weights = post.mean(0)"),
    (
        "em_no_prior_term",
        "post = torch.softmax(log_lik + weights.clamp_min(1e-300).log(), dim=1)",
        "post = torch.softmax(log_lik, dim=1)",
    ),
    (
        "em_softmax_dim0",
        "post = torch.softmax(log_lik + weights.clamp_min(1e-300).log(), dim=1)",
        "post = torch.softmax(log_lik + weights.clamp_min(1e-300).log(), dim=0)",
    ),
    (
        "loglik_swap",
        "return v[:, None] * q.log() + (k - v)[:, None] * torch.log1p(-q)",
        "return (k - v)[:, None] * q.log() + v[:, None] * torch.log1p(-q)",
    ),
    (
        "loglik_k",
        "return v[:, None] * q.log() + (k - v)[:, None] * torch.log1p(-q)",
        "return v[:, None] * q.log() + k[:, None] * torch.log1p(-q)",
    ),
    ("pm_index", "return (post @ support)[index]", "return (post @ support)"),
    ("pm_sum_tol", "if abs(float(weights.sum()) - 1.0) > 1e-6:", "if False:"),
    ("bad_v_gt_k", "(k < 1) | (v < 0) | (v > k)", "(k < 1) | (v < 0)"),
    ("bad_k0", "(k < 1) | (v < 0) | (v > k)", "(k < 0) | (v < 0) | (v > k)"),
    ("whole_numbers", "if torch.any(v != v.round()) or torch.any(k != k.round()):", "if False:"),
    (
        "support_open",
        "if not bool(((support > 0) & (support < 1)).all()):",
        "if not bool(((support >= 0) & (support <= 1)).all()):",
    ),
    ("em_one_iter", "for _ in range(iterations):", "for _ in range(1):"),
    ("pm_no_prior", "        + weights.clamp_min(1e-300).log(),\n", "        + 0.0,\n"),
]
# mutants that cannot change a result, so no test can catch them: why
EQUIVALENT = {}
