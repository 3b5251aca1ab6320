"""Behaviour of prefquant's VectorQuantizer and ResidualQuantizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prefquant import QuantizerOutput, ResidualQuantizer, VectorQuantizer, code_usage, fit_quantizer

pytestmark = pytest.mark.usefixtures("single_thread")


def clustered(
    num_clusters: int = 4, per_cluster: int = 64, dim: int = 8, spread: float = 0.05, seed: int = 0
):
    """Rows around well-separated centres; returns (x [C*P, d], centres [C, d], labels [C*P])."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_clusters, dim, generator=gen) * 3
    labels = torch.arange(num_clusters).repeat_interleave(per_cluster)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    return x, centres, labels


def test_encode_is_greedy_nearest_code_and_decode_sums_codes():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    rq = ResidualQuantizer(8, num_levels=3, codebook_size=16)
    fit_quantizer(rq, x, epochs=2, batch_size=64)
    codes = rq.encode(x)
    books = rq.codebooks
    residual, expected = x.clone(), []
    for level in range(3):
        nearest = torch.cdist(residual, books[level]).argmin(dim=1)
        expected.append(nearest)
        residual = residual - books[level][nearest]
    assert torch.equal(codes, torch.stack(expected, dim=1))
    assert torch.allclose(rq.decode(codes), x - residual, atol=1e-5)
    assert torch.equal(rq(x).codes, codes) if not rq.training else True
    vq = VectorQuantizer(8, 16)
    vq.train()
    vq(torch.randn(64, 8))
    distinct = vq.encode(vq.effective_codebook()).squeeze(1).unique().numel() == 16
    vq_codes = torch.randint(16, (40, 1))
    if distinct:
        assert torch.equal(vq.encode(vq.decode(vq_codes)), vq_codes)
    assert torch.equal(vq.decode(vq_codes), vq.effective_codebook()[vq_codes[:, 0]])


def test_forward_result_types_and_shapes():
    rq = ResidualQuantizer(6, num_levels=3, codebook_size=8)
    out = rq(torch.randn(32, 6))
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == (32, 6)
    assert out.codes.shape == (32, 3) and out.codes.dtype == torch.long
    assert out.loss.dim() == 0
    assert out.stats.usage.shape == (3,) and out.stats.perplexity.shape == (3,)
    assert out.stats.restarted_codes.shape == (3,)
    assert 0.0 < float(out.stats.usage.min()) <= 1.0
    assert 1.0 <= float(out.stats.perplexity.max()) <= 8.0


def test_kmeans_init_finds_clusters_on_first_batch():
    x, centres, _ = clustered(num_clusters=4, dim=8)
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, kmeans_iters=20, dead_code_patience=None)
    with pytest.raises(RuntimeError, match="not initialised"):
        vq.encode(x)
    vq.train()
    vq(x)
    assert vq.is_initialized
    distance = torch.cdist(centres, vq.effective_codebook())
    # Every true centre has a code on top of it (spread 0.05 vs centres ~3 apart).
    assert float(distance.min(dim=1).values.max()) < 0.1


def test_ema_updates_move_codebook_toward_data():
    gen = torch.Generator().manual_seed(1)
    target = torch.tensor([2.0, -1.0, 0.5, 3.0])
    vq = VectorQuantizer(4, 1, kmeans_init=False, decay=0.8, dead_code_patience=None)
    with torch.no_grad():
        vq.codebook.zero_()
        vq.embed_sum.zero_()
    before = float((vq.codebook[0] - target).norm())
    vq.train()
    errors = []
    for _ in range(30):
        vq(target + 0.1 * torch.randn(64, 4, generator=gen))
        errors.append(float((vq.codebook[0] - target).norm()))
    assert errors[0] < before
    assert errors[-1] < 0.1 * before
    assert errors[-1] < errors[4]


def test_eval_mode_never_updates_and_is_deterministic():
    torch.manual_seed(0)
    rq = ResidualQuantizer(8, num_levels=2, codebook_size=16, dead_code_patience=1)
    fit_quantizer(rq, torch.randn(200, 8), epochs=1, batch_size=100)
    state = {k: v.clone() for k, v in rq.state_dict().items()}
    x = torch.randn(300, 8) * 5  # far from the training data, would trigger updates in training
    rq.eval()
    first = rq(x)
    second = rq(x)
    assert torch.equal(first.codes, second.codes)
    assert torch.equal(first.codes, rq.encode(x))
    assert int(first.stats.restarted_codes.sum()) == 0
    rq.train()
    assert torch.equal(rq.encode(x), first.codes)  # encode never updates, even in train mode
    for name, value in rq.state_dict().items():
        assert torch.equal(value, state[name]), name
    rq(x)  # and a training forward does update
    assert any(not torch.equal(v, state[k]) for k, v in rq.state_dict().items())


def test_dead_code_restart_revives_unused_codes():
    x, centres, _ = clustered(num_clusters=8, per_cluster=32, dim=4)

    def make(patience: int | None) -> VectorQuantizer:
        vq = VectorQuantizer(4, 8, kmeans_init=False, dead_code_patience=patience, decay=0.9)
        with torch.no_grad():
            # Four codes on four clusters, four codes parked far from all data: they can never win.
            book = torch.cat([centres[:4], torch.full((4, 4), 100.0)])
            vq.codebook.copy_(book)
            vq.embed_sum.copy_(book)
        return vq

    def used_codes(vq: VectorQuantizer) -> int:
        return int(vq.encode(x).unique().numel())

    torch.manual_seed(0)
    revived, control = make(patience=2), make(patience=None)
    assert used_codes(revived) == 4 and used_codes(control) == 4
    history = fit_quantizer(revived, x, epochs=6, batch_size=64)
    fit_quantizer(control, x, epochs=6, batch_size=64)
    assert sum(h["restarted"] for h in history) >= 4
    assert used_codes(revived) == 8
    assert used_codes(control) == 4
    assert float(code_usage(revived.encode(x), 8)[0]) == 1.0


def test_duplicate_kmeans_seeds_from_small_first_batch_get_restarted():
    x, _, _ = clustered(num_clusters=16, per_cluster=16, dim=4)

    def run(patience: int | None) -> tuple[int, int]:
        torch.manual_seed(0)
        rq = ResidualQuantizer(4, num_levels=1, codebook_size=16, dead_code_patience=patience)
        rq.train()
        rq(x[torch.randperm(len(x))[:5]])  # 5 rows for 16 codes: k-means must reuse rows as seeds
        distinct_rows = torch.unique(rq.codebooks[0].round(decimals=2), dim=0).shape[0]
        fit_quantizer(rq, x, epochs=10, batch_size=64)
        return distinct_rows, int(rq.encode(x).unique().numel())

    distinct, used = run(patience=3)
    assert distinct <= 5
    assert used >= 15
    _, used_without_restart = run(patience=None)
    assert used_without_restart < used


def test_straight_through_gradient_reaches_input():
    torch.manual_seed(0)
    for module in (ResidualQuantizer(5, 3, 8), VectorQuantizer(5, 8)):
        module.train()
        module(torch.randn(64, 5))
        x = torch.randn(10, 5, requires_grad=True)
        weights = torch.randn(10, 5)
        out = module(x)
        (out.quantized * weights).sum().backward()
        assert torch.equal(x.grad, weights)
        x.grad = None
        module(x).loss.backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_reconstruction_improves_with_levels():
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    rq = ResidualQuantizer(8, num_levels=4, codebook_size=16)
    fit_quantizer(rq, x, epochs=4, batch_size=128)
    codes = rq.encode(x)
    errors = []
    for depth in range(1, 5):
        partial = sum(rq.levels[i].effective_codebook()[codes[:, i]] for i in range(depth))
        errors.append(float(F.mse_loss(partial, x)))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert float(F.mse_loss(rq.decode(codes), x)) == pytest.approx(errors[-1], rel=1e-5)


def test_learned_codebook_mode_trains_through_codebook_loss():
    x, _, _ = clustered(num_clusters=8, per_cluster=32, dim=6, spread=0.3)
    torch.manual_seed(0)
    rq = ResidualQuantizer(6, num_levels=2, codebook_size=8, codebook_mode="learned", kmeans_init=False)
    assert sum(p.numel() for p in rq.parameters()) == 2 * 8 * 6
    rq.eval()
    before = float(F.mse_loss(rq.decode(rq.encode(x)), x))
    rq.train()
    # Plain gradient steps: torch.optim's first use imports dynamo, which takes seconds here.
    losses = []
    for _ in range(120):
        out = rq(x[torch.randperm(len(x))[:64]])
        rq.zero_grad()
        out.loss.backward()
        assert all(p.grad is not None for p in rq.parameters())
        with torch.no_grad():
            for p in rq.parameters():
                p -= 0.5 * p.grad
        losses.append(float(out.loss.detach()))
    rq.eval()
    after = float(F.mse_loss(rq.decode(rq.encode(x)), x))
    assert after < 0.5 * before
    assert sum(losses[-10:]) < sum(losses[:10])


def test_cosine_mode_uses_unit_codes():
    torch.manual_seed(0)
    x, _, labels = clustered(num_clusters=4, dim=8)
    vq = VectorQuantizer(8, 4, use_cosine=True)
    fit_quantizer(vq, x * torch.rand(len(x), 1) * 10 + 0.0, epochs=3, batch_size=64)
    assert torch.allclose(vq.effective_codebook().norm(dim=-1), torch.ones(4), atol=1e-5)
    codes = vq.encode(x)[:, 0]
    # Scaling rows does not change a cosine code.
    assert torch.equal(codes, vq.encode(3.0 * x)[:, 0])
    # Each cluster maps to one code.
    for label in range(4):
        assert codes[labels == label].unique().numel() == 1


def test_normalize_input_reconstructs_unit_vectors():
    torch.manual_seed(0)
    x = torch.randn(256, 8) * 7
    rq = ResidualQuantizer(8, 3, 16, normalize_input=True)
    fit_quantizer(rq, x, epochs=3, batch_size=64)
    assert float(rq.decode(rq.encode(x)).norm(dim=-1).mean()) == pytest.approx(1.0, abs=0.2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dim": 0, "num_levels": 2, "codebook_size": 4}, "dim"),
        ({"dim": 4, "num_levels": 0, "codebook_size": 4}, "num_levels"),
        ({"dim": 4, "num_levels": 2, "codebook_size": 0}, "codebook_size"),
        ({"dim": 4, "num_levels": 2, "codebook_size": 4, "codebook_mode": "adam"}, "codebook_mode"),
        ({"dim": 4, "num_levels": 2, "codebook_size": 4, "decay": 1.0}, "decay"),
        ({"dim": 4, "num_levels": 2, "codebook_size": 4, "dead_code_patience": 0}, "dead_code_patience"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResidualQuantizer(**kwargs)


def test_shape_and_dtype_errors():
    rq = ResidualQuantizer(4, 2, 8)
    rq.train()
    rq(torch.randn(16, 4))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        rq.encode(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        rq(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="floating"):
        rq.encode(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        rq.decode(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        rq.decode(torch.tensor([[0, 8]]))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        rq.decode(torch.tensor([[-1, 0]]))
    with pytest.raises(TypeError, match="integer"):
        rq.decode(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="empty batch"):
        ResidualQuantizer(4, 2, 8)(torch.randn(0, 4))
    assert rq.encode(torch.randn(0, 4)).shape == (0, 2)


def test_config_rebuilds_equal_module():
    rq = ResidualQuantizer(
        4, 3, 8, codebook_mode="learned", decay=0.9, dead_code_patience=None, normalize_input=True
    )
    clone = ResidualQuantizer(**rq.config())
    assert clone.config() == rq.config()
    assert set(clone.state_dict()) == set(rq.state_dict())


def test_codes_unchanged_under_bf16_autocast():
    torch.manual_seed(0)
    x = torch.randn(1024, 16)
    rq = ResidualQuantizer(16, 3, 64)
    fit_quantizer(rq, x, epochs=2, batch_size=256)
    reference = rq.encode(x)
    rq.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(rq.encode(x), reference)
        out = rq(x)
    assert torch.equal(out.codes, reference)
    assert out.quantized.dtype == torch.float32
