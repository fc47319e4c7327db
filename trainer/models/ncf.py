"""NeuMF (He et al. 2017): GMF + MLP towers, trained in PyTorch, served as a numpy forward pass.

Training: each interaction against `negatives` uniformly sampled items the user has not
interacted with, binary cross-entropy (the paper's loss; BPR was tried and lost on validation),
Adam, seeded. Given a validation set, it evaluates
full-ranking NDCG@10 after each epoch, keeps the best weights and stops after `patience`
epochs without gain; the chosen epoch count is pinned in `resolved_params` so refits train
exactly that long.

Serving never imports torch: the weights are exported as .npy and `NCFScorer` runs the forward
pass in numpy. The MLP's first layer is split into its user and item halves, and the item half is
precomputed once at load, so scoring one user costs a few small matrix products.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from trainer.models.base import ModelSpec, Params, Scorer, recency_weights
from trainer.models.data import Interactions
from trainer.models.ranking import full_ranking_ndcg

log = logging.getLogger(__name__)

_SCORE_CHUNK = 64  # users per numpy forward chunk: bounds memory at chunk x n_items x hidden


class NCFParams(Params):
    gmf_dim: int = 32
    mlp_dim: int = 32
    hidden: tuple[int, ...] = (64, 32, 16)
    lr: float = 0.001
    weight_decay: float = 0.0
    negatives: int = 4
    batch_size: int = 256  # positives per step, each with its `negatives`
    epochs: int = 40  # the most epochs; early stopping may resolve it to fewer
    patience: int = 6  # validation NDCG is noisy: 3 stopped runs at epoch ~9, well short of best
    recency_tau: float | None = 3.0  # positive's loss weight: 1 + exp(-steps_from_end / tau)


class NCFScorer(Scorer):
    kind = "ncf"

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        super().__init__(
            n_users=self.weights["gmf_user"].shape[0], n_items=self.weights["gmf_item"].shape[0]
        )
        w = self.weights
        mlp_dim = w["mlp_user"].shape[1]
        self._w1_user = w["mlp_w0"][:, :mlp_dim].T.copy()  # (mlp_dim, h1)
        # Item half of the first MLP layer, computed once: (n_items, h1)
        self._item_h1 = w["mlp_item"] @ w["mlp_w0"][:, mlp_dim:].T + w["mlp_b0"]
        self._layers = [(w[f"mlp_w{i}"].T.copy(), w[f"mlp_b{i}"]) for i in range(1, self._depth())]
        gmf_dim = w["gmf_user"].shape[1]
        self._out_gmf = w["out_w"][0, :gmf_dim]
        self._out_mlp = w["out_w"][0, gmf_dim:]
        self._gmf_item_scaled = w["gmf_item"] * self._out_gmf  # fold the output weights in

    def _depth(self) -> int:
        return sum(1 for k in self.weights if k.startswith("mlp_w"))

    def _score_known(self, user_idxs: np.ndarray) -> np.ndarray:
        out = np.empty((user_idxs.size, self.n_items), dtype=np.float32)
        for start in range(0, user_idxs.size, _SCORE_CHUNK):
            users = user_idxs[start : start + _SCORE_CHUNK]
            gmf = self.weights["gmf_user"][users] @ self._gmf_item_scaled.T  # (B, n_items)
            h = (
                self._item_h1[None, :, :]
                + (self.weights["mlp_user"][users] @ self._w1_user)[:, None, :]
            )
            np.maximum(h, 0, out=h)
            for weight, bias in self._layers:
                h = h @ weight + bias
                np.maximum(h, 0, out=h)
            out[start : start + users.size] = gmf + h @ self._out_mlp + self.weights["out_b"][0]
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.weights)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> NCFScorer:
        return cls(arrays)


def _export(model) -> dict[str, np.ndarray]:  # model: _NeuMF
    weights = {
        "gmf_user": model.gmf_user.weight,
        "gmf_item": model.gmf_item.weight,
        "mlp_user": model.mlp_user.weight,
        "mlp_item": model.mlp_item.weight,
        "out_w": model.out.weight,
        "out_b": model.out.bias,
    }
    for i, layer in enumerate(model.mlp):
        weights[f"mlp_w{i}"] = layer.weight
        weights[f"mlp_b{i}"] = layer.bias
    return {k: v.detach().cpu().numpy().copy() for k, v in weights.items()}


def _sample_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    n_items: int,
    positive_keys: np.ndarray,
    per_positive: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`per_positive` unseen items per positive; collisions with positives are redrawn."""
    neg_users = np.repeat(users, per_positive)
    neg_items = rng.integers(0, n_items, size=neg_users.size)
    for _ in range(20):
        keys = neg_users.astype(np.int64) * n_items + neg_items
        clash = np.isin(keys, positive_keys, assume_unique=False)
        if not clash.any():
            break
        neg_items[clash] = rng.integers(0, n_items, size=int(clash.sum()))
    return neg_users, neg_items


def fit(
    data: Interactions,
    params: NCFParams,
    rng: np.random.Generator,
    valid: Interactions | None = None,
) -> NCFScorer:
    import torch

    # One intra-op thread: batches of 256 are too small to gain from more, a shared 2-core box
    # thrashed (90 s an epoch instead of a few), and the reduction order (so the result) then
    # no longer depends on the machine: the tuned numbers were measured this way.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(torch, data, params, rng, valid)
    finally:
        torch.set_num_threads(threads)


def _fit(
    torch,
    data: Interactions,
    params: NCFParams,
    rng: np.random.Generator,
    valid: Interactions | None,
) -> NCFScorer:
    import torch.nn.functional as F

    torch.manual_seed(int(rng.integers(2**31 - 1)))
    model = _build(torch, data.n_users, data.n_items, params)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    pos_weight = np.ones(len(data), dtype=np.float32)
    if params.recency_tau is not None:
        pos_weight += recency_weights(data, params.recency_tau)
    weights = torch.from_numpy(pos_weight)
    users_all = torch.from_numpy(data.user_idx.astype(np.int64))
    items_all = torch.from_numpy(data.item_idx.astype(np.int64))
    positive_keys = np.unique(data.user_idx.astype(np.int64) * data.n_items + data.item_idx)
    n_neg = params.negatives
    best = (-1.0, 0, _export(model))
    for epoch in range(1, params.epochs + 1):
        _, neg_items = _sample_negatives(rng, data.user_idx, data.n_items, positive_keys, n_neg)
        negatives = torch.from_numpy(neg_items.reshape(len(data), n_neg).astype(np.int64))
        order = torch.from_numpy(rng.permutation(len(data)))
        model.train()
        total = 0.0
        for start in range(0, len(data), params.batch_size):
            idx = order[start : start + params.batch_size]
            users, w = users_all[idx], weights[idx]
            pos = model(users, items_all[idx])  # (B,)
            neg = model(users.repeat_interleave(n_neg), negatives[idx].reshape(-1)).view(-1, n_neg)
            # pointwise: the positive towards 1 (weighted by recency), its negatives towards 0
            per_positive = (F.softplus(-pos) * w + F.softplus(neg).sum(dim=1)) / (1 + n_neg)
            loss = per_positive.mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * idx.numel()
        if valid is None:
            continue
        ndcg = full_ranking_ndcg(NCFScorer(_export(model)), data, valid)
        log.info("ncf epoch %d loss %.4f valid ndcg@10 %.4f", epoch, total / len(data), ndcg)
        if ndcg > best[0]:
            best = (ndcg, epoch, _export(model))
        elif epoch - best[1] >= params.patience:
            break
    if valid is None:
        return NCFScorer(_export(model))
    scorer = NCFScorer(best[2])
    scorer.resolved_params = params.model_copy(update={"epochs": max(best[1], 1)})
    return scorer


def _build(torch, n_users: int, n_items: int, params: NCFParams):
    nn = torch.nn

    class _NeuMF(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gmf_user = nn.Embedding(n_users, params.gmf_dim)
            self.gmf_item = nn.Embedding(n_items, params.gmf_dim)
            self.mlp_user = nn.Embedding(n_users, params.mlp_dim)
            self.mlp_item = nn.Embedding(n_items, params.mlp_dim)
            sizes = (2 * params.mlp_dim, *params.hidden)
            self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
            self.out = nn.Linear(params.gmf_dim + sizes[-1], 1)
            for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
                nn.init.normal_(emb.weight, std=0.01)

        def forward(self, users, items):
            gmf = self.gmf_user(users) * self.gmf_item(items)
            h = torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=1)
            for layer in self.mlp:
                h = torch.relu(layer(h))
            return self.out(torch.cat([gmf, h], dim=1)).squeeze(1)

    return _NeuMF()


SPEC = ModelSpec(
    kind="ncf",
    params=NCFParams,
    # One candidate: a two-seed sweep (README, "Tuning") showed the validation pick between
    # neighbouring NCF settings is mostly noise, and each candidate costs a minute on 2 cores.
    grid=({},),
    fit=fit,
    scorer=NCFScorer,
)
