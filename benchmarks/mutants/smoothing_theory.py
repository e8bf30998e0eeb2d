"""Mutants of src/smoothalign/smoothing/theory.py (see ../mutation_audit.py)."""

TARGET = "src/smoothalign/smoothing/theory.py"
TESTS = ["tests/test_theory.py"]
# (name, the exact text replaced (it must occur once), its replacement)
MUTANTS = [
    ("l2_no_2", "return 2 * q * (1 - q)", "return q * (1 - q)"),
    ("swap_l0_l2", 'if check_metric(metric) == "l2":', 'if check_metric(metric) == "l0":'),
    ("l0_max", "return torch.minimum(q, 1 - q)", "return torch.maximum(q, 1 - q)"),
    ("l0_abs", "return torch.minimum(q, 1 - q)", "return (q - 0.5).abs()"),
    (
        "eq_sign",
        "qt + _optimal_alpha(qt, metric) * (1 - 2 * qt)",
        "qt - _optimal_alpha(qt, metric) * (1 - 2 * qt)",
    ),
    (
        "eq_2q1",
        "qt + _optimal_alpha(qt, metric) * (1 - 2 * qt)",
        "qt + _optimal_alpha(qt, metric) * (1 - qt)",
    ),
    (
        "mse_sign",
        "qt * (qt - 1 + a) ** 2 + (1 - qt) * (qt - a) ** 2",
        "qt * (qt - 1 - a) ** 2 + (1 - qt) * (qt - a) ** 2",
    ),
    (
        "mse_weights_swap",
        "qt * (qt - 1 + a) ** 2 + (1 - qt) * (qt - a) ** 2",
        "(1 - qt) * (qt - 1 + a) ** 2 + qt * (qt - a) ** 2",
    ),
    (
        "prob_ge",
        "miss_if_won = ((qt - (1 - a)).abs() > atol)",
        "miss_if_won = ((qt - (1 - a)).abs() >= atol)",
    ),
    (
        "prob_won_target",
        "miss_if_won = ((qt - (1 - a)).abs() > atol)",
        "miss_if_won = ((qt - a).abs() > atol)",
    ),
    (
        "prob_weights_swap",
        "qt * miss_if_won + (1 - qt) * miss_if_lost",
        "(1 - qt) * miss_if_won + qt * miss_if_lost",
    ),
    ("target_swap", "z * (1 - a) + (1 - z) * a", "z * a + (1 - z) * (1 - a)"),
    (
        "alpha_range_1",
        'check_in_range(as_tensor(alpha, "alpha", like=like), "alpha", 0.0, 0.5)',
        'check_in_range(as_tensor(alpha, "alpha", like=like), "alpha", 0.0, 1.0)',
    ),
    (
        "q_range",
        'return check_in_range(as_tensor(q, "q"), "q", 0.0, 1.0)',
        'return as_tensor(q, "q")',
    ),
    (
        "label_range",
        'z = check_in_range(as_tensor(label, "label"), "label", 0.0, 1.0)',
        'z = as_tensor(label, "label")',
    ),
]
# mutants that cannot change a result, so no test can catch them: why
EQUIVALENT = {}
