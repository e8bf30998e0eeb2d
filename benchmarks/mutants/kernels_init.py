"""Mutants of src/smoothalign/kernels/__init__.py (see ../mutation_audit.py)."""

TARGET = "src/smoothalign/kernels/__init__.py"
TESTS = ["tests/test_kernels_chunked.py"]
# (name, the exact text replaced (it must occur once), its replacement)
MUTANTS = [
    (
        "mean_all_tokens",
        "n_valid = (flat_t != ignore_index).sum().clamp(min=1)",
        "n_valid = torch.tensor(flat_t.numel())",
    ),
    (
        "mean_no_clamp",
        "n_valid = (flat_t != ignore_index).sum().clamp(min=1)",
        "n_valid = (flat_t != ignore_index).sum()",
    ),
    (
        "logp_sign",
        "return (-losses).reshape(targets.shape)",
        "return losses.reshape(targets.shape)",
    ),
    ("ls_range", "if not 0.0 <= label_smoothing <= 1.0:", "if not 0.0 <= label_smoothing:"),
    ("target_range_gt", "((targets < 0) | (targets >= v))", "((targets < 0) | (targets > v))"),
    ("autocast_f64", "eligible = torch.float64 not in (e.dtype, c.dtype)", "eligible = True"),
]
# mutants that cannot change a result, so no test can catch them: why
EQUIVALENT = {}
