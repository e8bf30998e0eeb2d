"""Mutants of src/smoothalign/calibration/metrics.py (see ../mutation_audit.py)."""

TARGET = "src/smoothalign/calibration/metrics.py"
TESTS = ["tests/test_calibration_metrics.py"]
# (name, the exact text replaced (it must occur once), its replacement)
MUTANTS = [
    (
        "search_left",
        "torch.searchsorted(torch.from_numpy(edges[1:-1]), p, right=True)",
        "torch.searchsorted(torch.from_numpy(edges[1:-1]), p, right=False)",
    ),
    (
        "floor_bin",
        "idx = torch.searchsorted(torch.from_numpy(edges[1:-1]), p, right=True)",
        "idx = (p * bins).floor().clamp(0, bins - 1).long()",
    ),
    (
        "floor_noclamp",
        "idx = torch.searchsorted(torch.from_numpy(edges[1:-1]), p, right=True)",
        "idx = torch.searchsorted(torch.from_numpy(edges[1:]), p, right=True).clamp(max=bins - 1)",
    ),
    (
        "acc_from_p",
        "sum_y = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, y)",
        "sum_y = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, y.round())",
    ),
    (
        "weights_uniform",
        "return self.counts / max(self.counts.sum(), 1)",
        "return (self.counts > 0) / max((self.counts > 0).sum(), 1)",
    ),
    (
        "gaps_signed",
        "return np.nan_to_num(np.abs(self.accuracy - self.confidence))",
        "return np.nan_to_num(self.accuracy - self.confidence)",
    ),
    (
        "ece_mean",
        "    return float(np.sum(c.weights * c.gaps))\n",
        "    return float(np.mean(c.gaps[c.counts > 0]))\n",
    ),
    (
        "rms_nosqrt",
        "    return math.sqrt(float(np.sum(c.weights * c.gaps**2)))\n",
        "    return float(np.sum(c.weights * c.gaps**2))\n",
    ),
    (
        "rms_abs",
        "    return math.sqrt(float(np.sum(c.weights * c.gaps**2)))\n",
        "    return math.sqrt(float(np.sum(c.weights * c.gaps)))\n",
    ),
    (
        "mce_all_bins",
        "    return float(c.gaps[c.counts > 0].max())\n",
        "    return float(c.gaps.max())\n",
    ),
    ("brier_abs", "return float(((p - y) ** 2).mean())", "return float(((p - y).abs()).mean())"),
    ("brier_sum", "return float(((p - y) ** 2).mean())", "return float(((p - y) ** 2).sum())"),
    (
        "summary_ece_rms",
        '"ece": float(np.sum(c.weights * c.gaps)),',
        '"ece": float(np.sum(c.weights * c.gaps**2)),',
    ),
    ("summary_mce", '"mce": float(c.gaps[c.counts > 0].max()),', '"mce": float(c.gaps.mean()),'),
    (
        "edges_k",
        "edges = np.linspace(0.0, 1.0, bins + 1)",
        "edges = np.linspace(0.0, 1.0, bins + 2)[:-1]",
    ),
    ("outcome_range", 'check_in_range(y, "outcomes", 0.0, 1.0)', "pass"),
    ("bins_zero_ok", "or bins < 1:", "or bins < 0:"),
    (
        "swap_conf_acc",
        "        confidence=conf,\n        accuracy=acc,",
        "        confidence=acc,\n        accuracy=conf,",
    ),
    (
        "counts_minlength",
        "counts = torch.bincount(idx, minlength=bins)",
        "counts = torch.bincount(idx.clamp(max=bins - 2), minlength=bins)",
    ),
    (
        "brier_mirror",
        "    p, y = _inputs(probs, outcomes)\n    return",
        "    p, y = _inputs(probs, outcomes)\n    y = y.round()\n    return",
    ),
]
# mutants that cannot change a result, so no test can catch them: why
EQUIVALENT = {
    "floor_noclamp": "searching the whole edge list then clamping puts every forecast in the same bin",
    "mce_all_bins": "an empty bin's gap is 0 and gaps are never negative: the max is unchanged",
}
