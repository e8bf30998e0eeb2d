"""Mutants of src/smoothalign/losses/pairwise.py (see ../mutation_audit.py)."""

TARGET = "src/smoothalign/losses/pairwise.py"
TESTS = ["tests/test_losses.py"]
# (name, the exact text replaced (it must occur once), its replacement)
MUTANTS = [
    (
        "sig_swap_terms",
        "-(1 - alpha) * F.logsigmoid(h) - alpha * F.logsigmoid(-h)",
        "-(1 - alpha) * F.logsigmoid(-h) - alpha * F.logsigmoid(h)",
    ),
    (
        "sig_drop_alpha_term",
        "-(1 - alpha) * F.logsigmoid(h) - alpha * F.logsigmoid(-h)",
        "-(1 - alpha) * F.logsigmoid(h)",
    ),
    (
        "sig_plus_alpha",
        "-(1 - alpha) * F.logsigmoid(h) - alpha * F.logsigmoid(-h)",
        "-(1 + alpha) * F.logsigmoid(h) - alpha * F.logsigmoid(-h)",
    ),
    (
        "no_detach",
        'broadcast_per_pair(alpha, h, "alpha").detach()',
        'broadcast_per_pair(alpha, h, "alpha")',
    ),
    (
        "alpha_range_1",
        'check_in_range(a, "alpha", 0.0, 0.5)',
        'check_in_range(a, "alpha", 0.0, 1.0)',
    ),
    ("smoothing_check_all", "bool((a != 0).any())", "bool((a != 0).all())"),
    (
        "robust_sign",
        "((1 - e) * -F.logsigmoid(h) - e * -F.logsigmoid(-h)) / (1 - 2 * e)",
        "((1 - e) * -F.logsigmoid(h) + e * -F.logsigmoid(-h)) / (1 - 2 * e)",
    ),
    (
        "robust_denom",
        "((1 - e) * -F.logsigmoid(h) - e * -F.logsigmoid(-h)) / (1 - 2 * e)",
        "((1 - e) * -F.logsigmoid(h) - e * -F.logsigmoid(-h)) / (1 - e)",
    ),
    (
        "robust_high_incl",
        'check_in_range(eps, "flip_rate", 0.0, 0.5, high_inclusive=False)',
        'check_in_range(eps, "flip_rate", 0.0, 0.5, high_inclusive=True)',
    ),
    ("ipo_plus", "(h / beta - 1 / (2 * beta)) ** 2", "(h / beta + 1 / (2 * beta)) ** 2"),
    ("ipo_scaled", "(h / beta - 1 / (2 * beta)) ** 2", "(h - 1 / (2 * beta)) ** 2"),
    ("ipo_beta_le", "not 0 < beta < math.inf", "not 0 <= beta < math.inf"),
    ("hinge_shift", "torch.relu(1 - h)", "torch.relu(-h)"),
    (
        "nll_sign",
        "return -weight * chosen_logps / chosen_lengths",
        "return weight * chosen_logps / chosen_lengths",
    ),
    (
        "nll_no_len",
        "return -weight * chosen_logps / chosen_lengths.to(chosen_logps.dtype)",
        "return -weight * chosen_logps",
    ),
    ("nll_len_lt", "(chosen_lengths <= 0).any()", "(chosen_lengths < 0).any()"),
    ("nll_weight_le", 'if not 0 <= weight < float("inf"):', 'if not 0 < weight < float("inf"):'),
    ("missing_opt_none", "if options.get(k) is None]", "if k not in options]"),
]
# mutants that cannot change a result, so no test can catch them: why
EQUIVALENT = {}
