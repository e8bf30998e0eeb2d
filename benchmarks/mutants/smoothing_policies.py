"""Mutants of src/smoothalign/smoothing/policies.py (see ../mutation_audit.py)."""

TARGET = "src/smoothalign/smoothing/policies.py"
TESTS = ["tests/test_policies.py"]
# (name, the exact text replaced (it must occur once), its replacement)
MUTANTS = [
    ("tie_le", "torch.where(h.abs() < TIE_TOLERANCE", "torch.where(h.abs() <= TIE_TOLERANCE"),
    ("no_tie_snap", "torch.where(h.abs() < TIE_TOLERANCE, torch.zeros_like(h), h)", "h"),
    ("tie_tol_big", "TIE_TOLERANCE = 1e-5", "TIE_TOLERANCE = 1e-2"),
    ("sigmoid_neg", "return torch.sigmoid(torch.where(", "return torch.sigmoid(-torch.where("),
    (
        "step_update_first",
        "        a = self.alpha(margins, confidence)\n        self.update(margins)",
        "        self.update(margins)\n        a = self.alpha(margins, confidence)",
    ),
    (
        "const_zero",
        "return torch.full_like(_margins(margins), self.value)",
        "return torch.zeros_like(_margins(margins))",
    ),
    (
        "const_range",
        'check_in_range(torch.tensor(float(value), dtype=torch.float64), "alpha", 0.0, 0.5)',
        'check_in_range(torch.tensor(float(value), dtype=torch.float64), "alpha", 0.0, 1.0)',
    ),
    (
        "cals_wrong_metric",
        "a = self.calibrator.alpha(forecasts_from_margins(_host_margins(h)), self.metric)",
        "a = self.calibrator.alpha(forecasts_from_margins(_host_margins(h)), 'l2')",
    ),
    (
        "cals_no_update",
        "        self.calibrator.update(forecasts_from_margins(_host_margins(margins)))",
        "        pass",
    ),
    (
        "oracle_swap_metric",
        "return _optimal_alpha(q.detach(), self.metric)",
        "return _optimal_alpha(q.detach(), 'l0')",
    ),
    (
        "oracle_1mq",
        "return _optimal_alpha(q.detach(), self.metric)",
        "return _optimal_alpha(1 - q.detach(), self.metric)",
    ),
    ("oracle_range", 'check_in_range(q, "confidence", 0.0, 1.0)', "pass"),
    ("load_no_name_check", 'if state.get("name") != self.name:', "if False:"),
    (
        "cals_load_skip",
        '        self.calibrator.load_state_dict(state["calibrator"])',
        "        pass",
    ),
    (
        "opts_to_noncals",
        "    if calibrator_options:\n        raise",
        "    if False:\n        raise",
    ),
    ("alpha_dtype", "return a.to(device=h.device, dtype=h.dtype)", "return a.to(device=h.device)"),
    (
        "const_name_rounded",
        'self.name = f"constant:{self.value!r}"',
        'self.name = f"constant:{self.value:.3g}"',
    ),
    (
        "oracle_no_detach",
        "return _optimal_alpha(q.detach(), self.metric)",
        "return _optimal_alpha(q, self.metric)",
    ),
    ("fm_no_detach", "h = margins.detach().to(torch.float64)", "h = margins.to(torch.float64)"),
]
# mutants that cannot change a result, so no test can catch them: why
EQUIVALENT = {
    "oracle_1mq": "both a* rules are symmetric under q -> 1 - q",
}
