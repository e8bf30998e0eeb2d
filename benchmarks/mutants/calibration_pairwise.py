"""Mutants of src/smoothalign/calibration/pairwise.py (see ../mutation_audit.py)."""

TARGET = "src/smoothalign/calibration/pairwise.py"
TESTS = ["tests/test_pairwise_metrics.py"]
# (name, the exact text replaced (it must occur once), its replacement)
MUTANTS = [
    ("bins_odd", "PAIRWISE_BINS = 20", "PAIRWISE_BINS = 15"),
    (
        "true_no_mirror",
        "summary = calibration_summary(np.concatenate([s, 1 - s]), np.concatenate([q, 1 - q]), bins)",
        "summary = calibration_summary(s, q, bins)",
    ),
    ("true_mirror_wrong", "np.concatenate([q, 1 - q]), bins)", "np.concatenate([q, q]), bins)"),
    ("decided_all", "decided = q != 0.5", "decided = q == q"),
    (
        "tie_counts_zero",
        "right = np.where(d == 0, 0.5, (d > 0) == (q > 0.5))",
        "right = np.where(d == 0, 0.0, (d > 0) == (q > 0.5))",
    ),
    ("right_ge", "(d > 0) == (q > 0.5)", "(d > 0) == (q >= 0.5)"),
    (
        "kl_swap_logs",
        "- _times(q, log_s) - _times(1 - q, log_1s)",
        "- _times(q, log_1s) - _times(1 - q, log_s)",
    ),
    ("kl_no_entropy", "kl = _xlogx(q) + _xlogx(1 - q) - _times", "kl = - _times"),
    (
        "times_ge",
        "return np.where(x > 0, x * log_y, 0.0)",
        "return np.where(x >= 0, x * log_y, 0.0)",
    ),
    (
        "acc_tie_zero",
        '"accuracy": float(np.mean((h > 0) + 0.5 * (h == 0))),',
        '"accuracy": float(np.mean((h > 0))),',
    ),
    ("pref_no_mirror", "probs = np.concatenate([p, 1 - p])", "probs = np.concatenate([p, p])"),
    (
        "labels_swap",
        "labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])",
        "labels = np.concatenate([np.zeros_like(p), np.ones_like(p)])",
    ),
    ("known_all", "known = ~np.isnan(q)", "known = np.ones_like(q, dtype=bool)"),
    (
        "n_true_total",
        'out["n_pairs_true"] = float(known.sum())',
        'out["n_pairs_true"] = float(len(h))',
    ),
    (
        "curve_label0",
        "outcome = np.where(np.isnan(q), 1.0, q)",
        "outcome = np.where(np.isnan(q), 0.0, q)",
    ),
    (
        "curve_no_mirror_outcome",
        "np.concatenate([outcome, 1 - outcome]), bins",
        "np.concatenate([outcome, outcome]), bins",
    ),
    (
        "margin_mean_abs",
        'out["margin_mean"] = float(h.mean())',
        'out["margin_mean"] = float(np.abs(h).mean())',
    ),
]
# mutants that cannot change a result, so no test can catch them: why
EQUIVALENT = {
    "right_ge": "pairs with q = 1/2 are already excluded by `decided`",
}
