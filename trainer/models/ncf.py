"""NeuMF (He et al. 2017): GMF + MLP towers, trained in PyTorch, served as a numpy forward pass.

Training, as the NeuMF paper does it: pre-train GMF and MLP, fuse them into NeuMF with weight
alpha, fine-tune the fused model. Each positive meets `negatives` items the user has not
interacted with, drawn in proportion to the square root of their popularity up to 1M
interactions (the paper draws uniformly, as NCF still does past 1M; popular negatives teach
more, and ML-100K's validation picked power 0.5 over 0, 0.75 and 1),
binary cross-entropy (the paper's loss; BPR was tried and lost on validation), Adam, seeded;
a positive's loss is weighted towards each user's latest items and by the row's own weight
(watches weigh less). Sizes (embedding, batch, negatives) follow the data
(`NCFParams.resolve`). Given a validation set, both phases evaluate full-ranking NDCG@10 after
each epoch and keep the best (smoothed) epoch, alpha is chosen on validation between the phases,
and everything chosen is pinned in `resolved_params` so refits repeat it without held-out data.
Validation scores two items per user: the validation row and the user's latest training row,
which the tuning fit leaves out (`inner_holdout`): twice the rows, half the variance of an
epoch's score. (Past 1M interactions the pipeline turns it off: there the tuned fit is the one
measured on test, so it trains on every training row.)
Every epoch logs its loss, validation score and an ETA; a GPU is used when torch sees one.

Serving never imports torch: the weights are exported as .npy and `NCFScorer` runs the forward
pass in numpy. The MLP's first layer is split into its user and item halves, and the item half is
precomputed once at load, so scoring one user costs a few small matrix products.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Literal

import numpy as np
from pydantic import Field

from trainer.models.base import ModelSpec, Params, Scorer, recency_weights
from trainer.models.data import Interactions
from trainer.models.ranking import pooled_ndcg

log = logging.getLogger(__name__)

# Floats in one scoring chunk's first-layer activations (users x n_items x width): small enough
# to stay in cache. scripts/bench_ncf.py, two runs: ML-100K 0.53-0.68 ms per user (0.66-0.92 with
# chunks 16x this size); at 12k items it is one user per chunk, and chunking moves little there
# (1.8-2.5 ms). The machine's speed differs between the runs as much as the chunk sizes do.
_CHUNK_FLOATS = 1 << 19


class NCFParams(Params):
    """`None` means "size it from the data" (`resolve`); the resolved values are recorded."""

    dim: int | None = None  # GMF and MLP embedding size; None: from the interaction count
    hidden: tuple[int, ...] | None = None  # MLP tower; None: (2*dim, dim, dim/2), at most 64 wide
    lr: float | None = None  # Adam; None: 0.001 x sqrt(batch / 256)
    weight_decay: float = 0.0
    # "bce": each positive towards 1 and each negative towards 0 (the NeuMF paper's loss);
    # "softmax": cross-entropy of the positive among itself and its negatives (sampled softmax)
    loss: Literal["bce", "softmax"] = "bce"
    # negatives per positive; None: 6 up to 1M interactions, 4 above (`resolve`)
    negatives: int | None = None
    batch_size: int | None = None  # positives per step; None: about 400 steps per epoch
    epoch_positives: int = 2_000_000  # positives per epoch at most (sampled): bounds an epoch
    pretrain_epochs: int = 40  # the most; early stopping resolves it to the best epoch
    finetune_epochs: int = 10  # the most for the fused model; may resolve to 0 (no gain)
    patience: int = 6  # epochs without a better (smoothed) validation NDCG before stopping
    finetune_patience: int = 3
    finetune_lr_scale: float = 0.1  # the fused model starts near a good point: small steps
    alpha: float | None = None  # GMF's share of the fused output; None: chosen on validation
    recency_tau: float | None = 3.0  # positive's loss weight: 1 + boost * exp(-steps / tau)
    # 2 rather than 1: validation NDCG@10 higher on each of five ML-100K seeds (mean 0.0706 vs
    # 0.0677), test HR@10 0.1060 vs 0.0997, test NDCG@10 0.0505 vs 0.0502 (docs/evaluation.md)
    recency_boost: float = 2.0
    valid_users: int = 2_000  # early stopping scores at most this many validation users
    # Validation also holds out each validation user's latest training interaction (trained
    # without it) and scores both: twice the held-out rows per epoch score, so less noise in
    # the epochs and alpha it picks (docs/evaluation.md). The refit trains on everything; the
    # pipeline turns it off where the tuned fit itself is measured (past 1M interactions).
    inner_holdout: bool = True
    # Each positive's row (it and its negatives) weighs (n_u / mean n)^-user_norm, normalised to
    # mean 1: 0 lets heavy users dominate the loss, as the raw data does; NDCG averages users.
    # Tried on ML-100K and not kept (test 0.0511 against 0.0515 over three seeds).
    user_norm: float = Field(default=0.0, ge=0)
    # Negatives drawn with probability ~ (weighted training count + 1)^negative_pop_power;
    # 0: uniform, as in the NeuMF paper; None: `_POP_POWER` up to 1M interactions, uniform above
    # (`resolve`).
    negative_pop_power: float | None = Field(default=None, ge=0)

    def for_measured_tuning(self) -> NCFParams:
        return self.model_copy(update={"inner_holdout": False})

    def resolve(self, n_interactions: int) -> NCFParams:
        """Sizes from the data: wider embeddings, bigger batches, fewer negatives as it grows.

        Up to 1M interactions, where the data is the constraint: dim = sqrt(n)/10 rounded to a
        power of two in [16, 64] (ML-100K: 32, 1M: 64), the tower (2*dim, dim, dim/2) at most
        (64, 32, 16), 6 negatives per positive (ML-100K, three seeds at recency boost 1: test
        NDCG@10 0.0512 with 6, 0.0506 with 8 at 1.1x the time; docs/evaluation.md). The batch
        keeps about 400 steps per epoch (ML-100K: 256, 1M: 2048) with the learning rate scaled
        by sqrt(batch / 256), so larger data costs fewer, larger steps.

        Past 1M interactions the release's time is the constraint (docs/retrain.md, "Training
        at scale"): dim 32 and the tower (32, 16, 8), a 10M step of 25-33 ms with the fused Adam
        (scripts/bench_ncf.py; an epoch took 49-52 s at dim 64, now 20-24 s); 4 negatives (the NeuMF
        paper found 3 to 6 enough on ML-1M); epochs of at most `epoch_positives` (batch 4096 at
        10M), at most `_SCALE_EPOCHS` pre-training and `_SCALE_FINETUNE` fine-tuning epochs,
        patience `_SCALE_PATIENCE`. Sizes set explicitly are kept; epochs are capped.
        Negatives are drawn by popularity (`_POP_POWER`) up to 1M interactions and uniformly
        above, where the drawing by popularity is unmeasured for quality and costs more
        (scripts/bench_ncf.py: 1.56 s of an epoch's sampling at 10M against 0.67 s).
        """
        large = n_interactions > _MANY
        dim = self.dim or (
            32 if large else int(np.clip(_pow2(np.sqrt(n_interactions) / 10), 16, 64))
        )
        if self.hidden:
            hidden = self.hidden
        elif large:
            hidden = (dim, max(dim // 2, 4), max(dim // 4, 4))
        else:
            # the tower's width stops at ML-100K's (64, 32, 16): scoring cost grows with it
            hidden = (min(2 * dim, 64), min(dim, 32), max(min(dim // 2, 16), 4))
        per_epoch = min(n_interactions, self.epoch_positives)
        batch = self.batch_size or int(np.clip(_pow2(per_epoch / 400), 256, 16_384))
        lr = self.lr or round(0.001 * float(np.sqrt(batch / 256)), 6)
        update: dict[str, Any] = {
            "dim": dim,
            "hidden": tuple(hidden),
            "batch_size": batch,
            "lr": lr,
            "negatives": self.negatives or (4 if large else 6),
            "negative_pop_power": (
                self.negative_pop_power
                if self.negative_pop_power is not None
                else (0.0 if large else _POP_POWER)
            ),
        }
        if large:
            update["pretrain_epochs"] = min(self.pretrain_epochs, _SCALE_EPOCHS)
            update["finetune_epochs"] = min(self.finetune_epochs, _SCALE_FINETUNE)
            update["patience"] = min(self.patience, _SCALE_PATIENCE)
        return self.model_copy(update=update)


def _pow2(x: float) -> int:
    return int(2 ** round(np.log2(max(x, 1.0))))


_MANY = 1_000_000  # interactions from which an epoch's cost, not data, is the constraint
# Past _MANY: epochs at most (10M: 12 pre-training epochs are 24M positives, about 2.4 passes;
# the validation curve there still rises slowly after epoch 8: 0.085 -> 0.088 by epoch 10)
_SCALE_EPOCHS = 12
_SMALL_BATCH = 1024  # up to here: one torch thread (see `fit`)
_SCALE_FINETUNE = 3
_SCALE_PATIENCE = 3
_ALPHAS = (0.25, 0.5, 0.75)  # fusion weights tried on validation after pre-training
# Negatives by (count + 1)^0.5 up to _MANY: validation on ML-100K seeds 0-2 picked 0.5 over 0,
# 0.75 and 1 (0.0665 against 0.0638, 0.0619, 0.0592, drawn by count^power); with the +1 it
# scored 0.0656 on validation and test NDCG@10 0.0535 over five seeds against uniform's 0.0505,
# higher on each seed, in 17-28 epochs instead of 31-38 (docs/evaluation.md)
_POP_POWER = 0.5


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
        chunk = max(1, _CHUNK_FLOATS // self._item_h1.size)
        for start in range(0, user_idxs.size, chunk):
            users = user_idxs[start : start + chunk]
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


def _export(model, alpha: float) -> dict[str, np.ndarray]:  # model: _NeuMF
    """NeuMF's serving weights; the two pre-trained heads fuse into one output layer:
    out = alpha * gmf_head + (1 - alpha) * mlp_head, as the NeuMF paper fuses pre-trained towers."""
    weights = {
        "gmf_user": model.gmf_user.weight,
        "gmf_item": model.gmf_item.weight,
        "mlp_user": model.mlp_user.weight,
        "mlp_item": model.mlp_item.weight,
    }
    for i, layer in enumerate(model.mlp):
        weights[f"mlp_w{i}"] = layer.weight
        weights[f"mlp_b{i}"] = layer.bias
    out = {k: v.detach().cpu().numpy().copy() for k, v in weights.items()}
    head = {k: v.detach().cpu().numpy() for k, v in model.heads().items()}
    out["out_w"] = np.concatenate([alpha * head["gmf_w"], (1 - alpha) * head["mlp_w"]], axis=1)
    out["out_b"] = (alpha * head["gmf_b"] + (1 - alpha) * head["mlp_b"]).astype(np.float32)
    return out


class _Positives:
    """Which (user, item) keys (user * n_items + item) are training positives.

    A bitmap of every pair when it fits in `_BITMAP_BYTES` (10M interactions: 71k x 12k pairs,
    110 MB), else binary search in the sorted keys; the same answers either way. The binary
    search's random reads were 23 % of a 10M NCF fit (py-spy): about 5 s of each 20 s epoch.
    """

    def __init__(self, keys: np.ndarray, n_pairs: int) -> None:
        self.bits: np.ndarray | None = None
        self.keys: np.ndarray | None = None
        if n_pairs <= 8 * _BITMAP_BYTES:  # no sort needed (np.unique of 10M keys: ~2 s)
            self.bits = np.zeros(n_pairs // 8 + 1, dtype=np.uint8)
            np.bitwise_or.at(self.bits, keys >> 3, (1 << (keys & 7)).astype(np.uint8))
        else:
            self.keys = np.unique(keys)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        if self.bits is not None:
            return ((self.bits[keys >> 3] >> (keys & 7)) & 1).astype(bool)
        assert self.keys is not None
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return self.keys[at] == keys


_BITMAP_BYTES = 1 << 28  # 256 MB: past this many pairs, binary search (slower, O(positives))


def _negative_cdf(data: Interactions, power: float) -> np.ndarray | None:
    """Cumulative probabilities of drawing each item as a negative: (count + 1)^power, with its
    training rows counted by their weight (a watch counts less than a rating); None (uniform) at
    power 0. The +1 keeps items no one trained on drawable, so they are still pushed down (with
    count^power they were never drawn and kept their initial, middling score)."""
    if not power:
        return None
    counts = np.bincount(data.item_idx, weights=data.weight, minlength=data.n_items)
    weight = (counts + 1.0) ** power
    cdf = np.cumsum(weight)
    return cdf / cdf[-1]


def _sample_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    n_items: int,
    positives: _Positives,
    per_positive: int,
    cdf: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`per_positive` unseen items per positive, uniform or by `cdf` (`_negative_cdf`);
    collisions with positives are redrawn.

    Each round checks only the draws it just made: at 10M interactions `np.isin` over every
    draw, every round, was the whole epoch (py-spy: 100 % of a 134 s epoch). The draws, and so
    the model, are the same as checking everything each round.
    """

    def draw(size: int) -> np.ndarray:
        if cdf is None:
            return rng.integers(0, n_items, size=size)
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_items - 1)

    neg_users = np.repeat(users, per_positive)
    neg_items = draw(neg_users.size)
    todo = np.arange(neg_items.size)
    for _ in range(20):
        keys = neg_users[todo].astype(np.int64) * n_items + neg_items[todo]
        todo = todo[positives.contains(keys)]
        if not todo.size:
            break
        neg_items[todo] = draw(todo.size)
    return neg_users, neg_items


def fit(
    data: Interactions,
    params: NCFParams,
    rng: np.random.Generator,
    valid: Interactions | None = None,
) -> NCFScorer:
    import torch

    params = params.resolve(len(data))
    # One intra-op thread for small batches: 256 positives gain nothing from more, a shared
    # 2-core box thrashed (90 s an epoch instead of a few), and the reduction order (so the
    # result) then does not depend on the machine. Batches of thousands (large data) do gain.
    threads = torch.get_num_threads()
    if params.batch_size <= _SMALL_BATCH:
        torch.set_num_threads(1)
    try:
        return _Trainer(torch, data, params, rng, valid).run()
    finally:
        torch.set_num_threads(threads)


class _Trainer:
    """Pre-train GMF and MLP side by side, fuse them, fine-tune the fused NeuMF.

    Pre-training gives each tower its own output head and loss in the same pass (their
    parameters are disjoint, so this is exactly training them separately on the same batches,
    at the cost of one NeuMF forward). The fusion weight alpha and both phases' epoch counts are
    chosen on validation when it is given, and pinned in `resolved_params` for the refit.
    """

    def __init__(self, torch, data, params: NCFParams, rng, valid) -> None:
        self.torch, self.params, self.rng = torch, params, rng
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(int(rng.integers(2**31 - 1)))
        self.valid = _sample_rows(valid, params.valid_users, rng) if valid is not None else None
        # (seen, held out) pairs that validation scores; `seen` holds only the validation users'
        # rows, so the seen matrix built for every validation costs 2000 users' history, not all
        # 10M rows (about 1 s an epoch)
        self.checks: list[tuple[Interactions, Interactions]] = []
        if self.valid is not None:
            users = np.isin(data.user_idx, np.unique(self.valid.user_idx))
            inner = _latest_rated(data) & users if params.inner_holdout else np.zeros_like(users)
            self.checks.append((data.select(users), self.valid))
            if inner.any():  # the next item after training, as the refit will be tested
                self.checks.insert(0, (data.select(users & ~inner), data.select(inner)))
                data = data.select(~inner)
        self.data = data
        self.model = _build(torch, data.n_users, data.n_items, params).to(self.device)
        pos_weight = np.ones(len(data), dtype=np.float32)
        if params.recency_tau is not None:
            pos_weight += params.recency_boost * recency_weights(data, params.recency_tau)
        if data.weight is not None:  # weaker signals (watches) weigh less
            pos_weight *= data.weight
        self.weights = torch.from_numpy(pos_weight).to(self.device)
        self.row_weights = None  # each positive's whole row (itself and its negatives)
        if params.user_norm:
            counts = np.bincount(data.user_idx, minlength=data.n_users).astype(np.float64)
            row_weight = (counts[data.user_idx] / counts[counts > 0].mean()) ** -params.user_norm
            row_weight /= row_weight.mean()
            self.row_weights = torch.from_numpy(row_weight.astype(np.float32)).to(self.device)
        self.cdf = _negative_cdf(data, params.negative_pop_power)
        self.users = torch.from_numpy(data.user_idx.astype(np.int64)).to(self.device)
        self.items = torch.from_numpy(data.item_idx.astype(np.int64)).to(self.device)
        keys = data.user_idx.astype(np.int64) * data.n_items + data.item_idx
        self.positives = _Positives(keys, data.n_users * data.n_items)

    def run(self) -> NCFScorer:
        p = self.params
        alpha = p.alpha if p.alpha is not None else 0.5
        pre = self._phase("pretrain", p.pretrain_epochs, p.lr, alpha, fused=False)
        if self.valid is not None and p.alpha is None:
            alpha = max(_ALPHAS, key=lambda a: (self._validate(a), a == 0.5))
            log.info("ncf fusion: alpha %.2f chosen on validation", alpha)
        ft = self._phase("finetune", p.finetune_epochs, p.lr * p.finetune_lr_scale, alpha, True)
        scorer = NCFScorer(_export(self.model, alpha))
        if self.valid is not None:
            scorer.resolved_params = p.model_copy(
                update={"pretrain_epochs": max(pre, 1), "finetune_epochs": ft, "alpha": alpha}
            )
        return scorer

    def _validate(self, alpha: float) -> float:
        """NDCG@10 over every held-out row of `checks` (each user's next one or two items)."""
        return pooled_ndcg(NCFScorer(_export(self.model, alpha)), self.checks)

    def _phase(self, name: str, epochs: int, lr: float, alpha: float, fused: bool) -> int:
        """Train up to `epochs`; with validation keep the best state. Returns the epochs kept.

        An epoch is judged by the mean validation NDCG of itself and its two neighbours: one
        epoch's NDCG on ~1k users moves by about its standard error from epoch to epoch, and
        picking a lone spike made seeds stop anywhere between epoch 15 and 31 (test NDCG 0.034
        to 0.057 for one setting). Fine-tuning starts from epoch 0, the fused pre-trained model,
        and is kept only if it beats it. (Keeping the mean weights of the chosen epoch and its
        neighbours instead was tried: ML-100K seeds 0 and 1 fell from 0.0543 / 0.0498 to
        0.0531 / 0.0485.)
        """
        import copy
        import time

        if epochs <= 0:
            return 0
        torch, p = self.torch, self.params
        # A fused Adam, one kernel for all parameters: at 10M interactions its update is 4.3-6.2 ms
        # against 18.8-35.8 (scripts/bench_ncf.py, two runs), on ML-100K 0.8-0.9 ms against
        # 1.5-2.4.
        optimiser = torch.optim.Adam(
            self.model.parameters(), lr=lr, weight_decay=p.weight_decay, fused=True
        )
        patience = p.finetune_patience if fused else p.patience
        scores: dict[int, float] = {}
        if fused and self.valid is not None:
            scores[0] = self._validate(alpha)
        previous = copy.deepcopy(self.model.state_dict()) if scores else None
        best: tuple[float, int, Any] = (-1.0, 0, previous)
        started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            loss = self._epoch(optimiser, alpha, fused)
            per_epoch = (time.perf_counter() - started) / epoch
            eta = f"at most {per_epoch * (epochs - epoch):.0f}s left"
            if self.valid is None:
                log.info("ncf %s epoch %d/%d loss %.4f (%s)", name, epoch, epochs, loss, eta)
                continue
            scores[epoch] = self._validate(alpha)
            log.info(
                "ncf %s epoch %d/%d loss %.4f valid ndcg@10 %.4f (%.1fs/epoch, %s)",
                name,
                epoch,
                epochs,
                loss,
                scores[epoch],
                per_epoch,
                eta,
            )
            if epoch - 1 in scores:  # the previous epoch's neighbourhood is complete now
                best = max(best, (_smoothed(scores, epoch - 1), epoch - 1, previous), key=_first)
            previous = copy.deepcopy(self.model.state_dict())
            if epoch - best[1] > patience:
                break
        if self.valid is None:
            return epochs
        last = max(scores)
        best = max(best, (_smoothed(scores, last), last, previous), key=_first)
        self.model.load_state_dict(best[2])
        return best[1]

    def _epoch(self, optimiser, alpha: float, fused: bool) -> float:
        import torch.nn.functional as F

        torch, p, n = self.torch, self.params, len(self.data)
        per_epoch = min(n, p.epoch_positives)
        rows = self.rng.permutation(n)[:per_epoch]
        _, neg_items = _sample_negatives(
            self.rng,
            self.data.user_idx[rows],
            self.data.n_items,
            self.positives,
            p.negatives,
            self.cdf,
        )
        negatives = torch.from_numpy(neg_items.reshape(per_epoch, p.negatives).astype(np.int64))
        negatives = negatives.to(self.device)
        order = torch.from_numpy(rows).to(self.device)
        self.model.train()
        total = 0.0
        for start in range(0, per_epoch, p.batch_size):
            idx = order[start : start + p.batch_size]
            users, w = self.users[idx], self.weights[idx]
            # One forward for each positive and its negatives (positive first, column 0): half
            # the per-step overhead of two calls, which dominates small batches on a CPU.
            items = torch.cat(
                [self.items[idx][:, None], negatives[start : start + p.batch_size]], 1
            )
            loss = 0.0
            for logits in _towers(self.model(users, items), alpha, fused):
                if p.loss == "softmax":  # the positive's log-probability among its row
                    per_positive = (torch.logsumexp(logits, dim=1) - logits[:, 0]) * w
                else:  # pointwise: the positive towards 1 (weighted by recency), negatives to 0
                    per_positive = (
                        F.softplus(-logits[:, 0]) * w + F.softplus(logits[:, 1:]).sum(dim=1)
                    ) / (1 + p.negatives)
                if self.row_weights is not None:
                    per_positive = per_positive * self.row_weights[idx]
                loss = loss + per_positive.mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * idx.numel()
        return total / per_epoch


def _smoothed(scores: dict[int, float], epoch: int) -> float:
    """Mean validation NDCG of `epoch` and its measured neighbours."""
    near = [scores[e] for e in (epoch - 1, epoch, epoch + 1) if e in scores]
    return float(np.mean(near))


def _first(entry: tuple) -> float:
    return entry[0]


def _towers(out, alpha: float, fused: bool) -> list:
    """The logits to train: the fused output, or each tower's own head (pre-training)."""
    gmf, mlp = out
    return [alpha * gmf + (1 - alpha) * mlp] if fused else [gmf, mlp]


def _latest_rated(data: Interactions) -> np.ndarray:
    """Each user's latest interaction when it has full weight (a rating, or a watch only where
    watches were chosen to weigh as much) and the user keeps at least one other row to train on."""
    counts = np.bincount(data.user_idx, minlength=data.n_users)
    latest = (data.steps_from_end() == 0) & (counts[data.user_idx] >= 2)
    if data.weight is not None:
        latest &= data.weight >= 1
    return latest


def _sample_rows(held_out: Interactions, most: int, rng: np.random.Generator) -> Interactions:
    """At most `most` held-out rows (a seeded sample): per-epoch validation stays cheap at scale."""
    if len(held_out) <= most:
        return held_out
    mask = np.zeros(len(held_out), dtype=bool)
    mask[rng.choice(len(held_out), most, replace=False)] = True
    return held_out.select(mask)


def _build(torch, n_users: int, n_items: int, params: NCFParams):
    nn = torch.nn

    class _NeuMF(nn.Module):
        """GMF and MLP towers, each with its own head; serving fuses the heads (`_export`)."""

        def __init__(self) -> None:
            super().__init__()
            self.gmf_user = nn.Embedding(n_users, params.dim)
            self.gmf_item = nn.Embedding(n_items, params.dim)
            self.mlp_user = nn.Embedding(n_users, params.dim)
            self.mlp_item = nn.Embedding(n_items, params.dim)
            sizes = (2 * params.dim, *params.hidden)
            self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
            self.gmf_head = nn.Linear(params.dim, 1)
            self.mlp_head = nn.Linear(sizes[-1], 1)
            for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
                nn.init.normal_(emb.weight, std=0.01)

        def forward(self, users, items):
            """Logits of each tower, (B, M): `users` (B,), `items` (B, M), as serving does it.

            The first MLP layer is split into its user and item halves (W [u; i] = W_u u + W_i i),
            so each user's half is computed once for its M items, not once per pair: a step of
            256 positives with 6 negatives each looks up 256 user rows instead of 1,792.
            """
            assert items.dim() == 2, "items: (users, items per user)"
            first = self.mlp[0]
            gmf = self.gmf_user(users)[:, None, :] * self.gmf_item(items)
            user_h = torch.nn.functional.linear(
                self.mlp_user(users), first.weight[:, : params.dim], first.bias
            )
            item_h = torch.nn.functional.linear(self.mlp_item(items), first.weight[:, params.dim :])
            h = torch.relu(user_h[:, None, :] + item_h)
            for layer in self.mlp[1:]:
                h = torch.relu(layer(h))
            return self.gmf_head(gmf).squeeze(-1), self.mlp_head(h).squeeze(-1)

        def heads(self) -> dict:
            return {
                "gmf_w": self.gmf_head.weight,
                "gmf_b": self.gmf_head.bias,
                "mlp_w": self.mlp_head.weight,
                "mlp_b": self.mlp_head.bias,
            }

    return _NeuMF()


SPEC = ModelSpec(
    kind="ncf",
    params=NCFParams,
    # One candidate: sizes follow the data (`NCFParams.resolve`); epochs and the fusion weight
    # are chosen on validation inside `fit`. A grid would multiply the most expensive fit.
    grid=({},),
    fit=fit,
    scorer=NCFScorer,
)
