"""Mutants of src/smoothalign/smoothing/calibrator.py (see ../mutation_audit.py)."""

TARGET = "src/smoothalign/smoothing/calibrator.py"
TESTS = ["tests/test_calibrator.py"]
# (name, the exact text replaced (it must occur once), its replacement)
MUTANTS = [
    ("odd_bins_ok", "bins < 2 or bins % 2", "bins < 2"),
    (
        "low_clamp",
        "low = (p * k).floor().clamp(0, half - 1)",
        "low = (p * k).floor().clamp(0, half)",
    ),
    (
        "high_offby1",
        "high = ((k - 1) - ((1 - p) * k).floor()).clamp(half, k - 1)",
        "high = (k - ((1 - p) * k).floor()).clamp(half, k - 1)",
    ),
    (
        "plain_floor",
        "return torch.where(p < 0.5, low, high).long().cpu()",
        "return (p * k).floor().clamp(0, k - 1).long().cpu()",
    ),
    ("lt_le_half", "torch.where(p < 0.5, low, high)", "torch.where(p <= 0.5, low, high)"),
    ("no_tie_exclusion", "        p = p[p != 0.5]  # exact ties carry no information\n", ""),
    ("no_mirror", "counts[1] = counts[0].flip(0)", "counts[1] = counts[0]"),
    ("mirror_zero", "counts[1] = counts[0].flip(0)", "pass"),
    ("update_all_bins", "touched = counts.sum(0) > 0", "touched = counts.sum(0) >= 0"),
    ("momentum_order", "m * self.wins + counts[0]", "m * (self.wins + counts[0])"),
    (
        "ema_normalised",
        "self.wins = torch.where(touched, m * self.wins + counts[0], self.wins)",
        "self.wins = torch.where(touched, m * self.wins + (1 - m) * counts[0], self.wins)",
    ),
    (
        "losses_swap",
        "self.losses = torch.where(touched, m * self.losses + counts[1], self.losses)",
        "self.losses = torch.where(touched, m * self.losses + counts[0], self.losses)",
    ),
    ("drop_kappa_c0", "q = (self.wins + kappa * c0) / total", "q = (self.wins) / total"),
    (
        "prior_decays",
        "total = self.wins + self.losses + kappa",
        "total = self.wins + self.losses + kappa * self.momentum ** self.step",
    ),
    (
        "drop_kappa_denom",
        "total = self.wins + self.losses + kappa",
        "total = self.wins + self.losses",
    ),
    (
        "empty_fallback_half",
        "torch.where(total > 0, q, torch.full_like(q, c0))",
        "torch.where(total > 0, q, torch.full_like(q, 0.5))",
    ),
    ("warmup_le", "return self.step < self.warmup_steps", "return self.step <= self.warmup_steps"),
    (
        "warmup_alpha_zero",
        "c = torch.full_like(p, self.init_confidence).cpu()",
        "c = torch.ones_like(p).cpu()",
    ),
    ("no_step_incr", "        self.step += 1\n", ""),
    ("momentum_range", "if not 0.0 <= momentum < 1.0:", "if not 0.0 <= momentum <= 1.0:"),
    (
        "sum_ranks_inverted",
        "if ranks and self.sum_across_ranks is not False:",
        "if ranks and self.sum_across_ranks:",
    ),
    (
        "load_no_step",
        "self.wins, self.losses, self.step = wins, losses, step",
        "self.wins, self.losses = wins, losses",
    ),
    ("load_negative_ok", "or bool((t < 0).any())", ""),
    ("state_no_clone", '"wins": self.wins.clone(),', '"wins": self.wins,'),
    ("reliability_edges", "torch.linspace(0, 1, self.bins + 1)", "torch.linspace(0, 1, self.bins)"),
    (
        "cal_no_detach",
        'p = as_tensor(forecasts, "forecasts").detach().to(torch.float64)',
        'p = as_tensor(forecasts, "forecasts").to(torch.float64)',
    ),
]
# mutants that cannot change a result, so no test can catch them: why
EQUIVALENT = {
    "low_clamp": "floor(p*K) < K/2 for every p < 1/2 (checked for every even K <= 2000 on the 50 floats either side of 1/2): the clamp never acts",
    "cal_no_detach": "nothing it returns can carry a gradient (bincount, indexing, full_like)",
}
