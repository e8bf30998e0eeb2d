"""Mutants of src/smoothalign/kernels/chunked.py (see ../mutation_audit.py)."""

TARGET = "src/smoothalign/kernels/chunked.py"
TESTS = ["tests/test_kernels_chunked.py"]
# (name, the exact text replaced (it must occur once), its replacement)
MUTANTS = [
    ("fwd_beta_keeps_target", "ell = lse_c - (1.0 - beta) * zt", "ell = lse_c - zt"),
    (
        "fwd_mean_sum",
        "mean_z = z.mean(-1) if softcap is not None else ec @ c_mean + b_mean",
        "mean_z = z.sum(-1) if softcap is not None else ec @ c_mean + b_mean",
    ),
    ("fwd_no_bmean", "b_mean = bb.mean() if bb is not None else 0.0", "b_mean = 0.0"),
    ("fwd_cmean_sum", "c_mean = cc.mean(0)", "c_mean = cc.sum(0) / (cc.shape[0] - 1)"),
    ("fwd_no_mask", "loss = loss.masked_fill(~valid, 0.0)", "pass"),
    ("bwd_no_mask", "g = grad.to(acc).masked_fill(~valid, 0.0)", "g = grad.to(acc)"),
    ("bwd_beta_V1", "dz -= beta / v", "dz -= beta / (v - 1)"),
    ("bwd_no_beta_term", "                dz -= beta / v\n", "                pass\n"),
    (
        "bwd_onehot_full",
        "torch.full_like(gc[:, None], -(1.0 - beta))",
        "torch.full_like(gc[:, None], -1.0)",
    ),
    ("bwd_softcap_deriv", "dz *= 1.0 - th * th", "dz *= 1.0 - th"),
    ("bwd_no_softcap_deriv", "                dz *= 1.0 - th * th\n", "                pass\n"),
    ("bwd_db_mean", "db += dz.sum(0)", "db += dz.mean(0)"),
    ("bwd_dc_overwrite", "dc += dz.T @ ec", "dc = dz.T @ ec"),
    ("bwd_skip_chunk_all", "if not bool(gc.any()):", "if not bool(gc.all()):"),
    (
        "bwd_grad_not_applied",
        "            dz *= gc[:, None]\n",
        "            dz *= (gc[:, None] != 0)\n",
    ),
    ("softcap_no_outer", "return softcap * th, th", "return th, th"),
    ("bias_dropped", "        raw = raw + bias\n", "        raw = raw\n"),
    (
        "chunk_rows_zero",
        "return max(1, min(n, CHUNK_ELEMENTS // max(v, 1)))",
        "return max(1, min(n - 1, CHUNK_ELEMENTS // max(v, 1)))",
    ),
    (
        "lse_dtype_f32",
        "lse = torch.zeros(n, dtype=torch.float32 if acc == torch.float32 else acc, device=e.device)",
        "lse = torch.zeros(n, dtype=torch.float32, device=e.device)",
    ),
    (
        "acc_always_f32",
        "        torch.float64\n        if any",
        "        torch.float32\n        if any",
    ),
    ("bwd_de_acc", "de[s : s + rows] = dz @ cc", "de[s : s + rows] += dz @ cc"),
]
# mutants that cannot change a result, so no test can catch them: why
EQUIVALENT = {
    "chunk_rows_zero": "another chunk size changes only the chunking, not the result",
    "bwd_de_acc": "de starts at zero and each row range is written once: += equals =",
}
