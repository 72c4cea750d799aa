"""A small discrete world with an exact posterior sampler and a Bayes-optimal classifier.

World: hidden state ``s = (findings bits, nuisance u)`` with a fixed prior. The image of a state
is block-constant: the image is cut into ``(size / patch)^2`` blocks; block ``j`` shows a value
from a fixed table indexed by (one finding bit or none, u), so each finding is visible only in
some blocks and the nuisance everywhere. Given an observation ``x * m`` the consistent states
and their posterior are found by enumeration, so:

- :class:`BayesClassifier` returns the exact posterior marginals ``P(label = 1 | x * m, m)``;
- :class:`PosteriorSampler` draws exact posterior completions (or, ``exact=True``, returns every
  consistent state once with log-weights = log posterior: the EIG is then exact);
- :func:`exact_mutual_information` computes ``I(v; y_c | x * m)`` independently of boed.eig.
"""

from __future__ import annotations

import itertools
import math

import torch

from boed.protocols import Completions
from datasets.labels import ANY, FINDINGS, LABELS


class ToyWorld:
    def __init__(self, size=8, patch=4, findings=("Effusion", "Nodule"), n_nuisance=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.size, self.patch, self.findings = size, patch, tuple(findings)
        bits = list(itertools.product((0, 1), repeat=len(findings)))
        self.states = [(b, u) for b in bits for u in range(n_nuisance)]
        prior = torch.rand(len(self.states), generator=g, dtype=torch.float64) + 0.5
        self.prior = prior / prior.sum()
        nb = size // patch
        parents = torch.randint(0, len(findings) + 1, (nb * nb,), generator=g)  # == F: nuisance only
        table = torch.randint(0, 3, (nb * nb, 2, n_nuisance), generator=g).double() / 2  # values 0, .5, 1
        images = torch.zeros(len(self.states), 1, size, size, dtype=torch.float32)
        for k, (b, u) in enumerate(self.states):
            for j in range(nb * nb):
                bit = b[parents[j]] if parents[j] < len(findings) else 0
                r, c = divmod(j, nb)
                images[k, 0, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = float(
                    table[j, bit, u]
                )
        self.images = images
        self.labels = LABELS
        lab = torch.zeros(len(self.states), len(LABELS), dtype=torch.float64)
        for k, (b, _u) in enumerate(self.states):
            for name, bit in zip(findings, b, strict=True):
                lab[k, FINDINGS.index(name)] = bit
            lab[k, LABELS.index(ANY)] = float(any(b))
        self.state_labels = lab

    def consistent(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(n_states,)`` posterior of the states given one observation ``(1, H, W)``."""
        diff = ((self.images * mask - observed * mask).abs().flatten(1).amax(1)) < 1e-5
        post = self.prior * diff
        return post / post.sum()

    def sample_states(self, n, generator):
        return torch.multinomial(self.prior, n, replacement=True, generator=generator)


class BayesClassifier:
    """Exact posterior marginals of every label; counts the rows it is asked about."""

    def __init__(self, world: ToyWorld, name="bayes"):
        self.world, self.labels, self.image_size, self.name = world, world.labels, world.size, name
        self.rows = 0
        self.calls = 0

    def predict(self, observed, mask):
        self.calls += 1
        self.rows += observed.shape[0]
        pairs = zip(observed, mask, strict=True)
        out = torch.stack([self.world.consistent(o, m) @ self.world.state_labels for o, m in pairs])
        return out.float()


class PosteriorSampler:
    """Exact posterior completions; ``exact=True``: every consistent state with its log-weight."""

    name = "posterior"

    def __init__(self, world: ToyWorld, exact=False):
        self.world, self.exact, self.image_size = world, exact, world.size

    def sample(self, observed, mask, n, generator=None):
        images, logw = [], []
        for o, m in zip(observed, mask, strict=True):
            post = self.world.consistent(o, m)
            if self.exact:
                keep = (post > 0).nonzero().squeeze(1)
                images.append(self.world.images[keep])
                logw.append(post[keep].log())
            else:
                idx = torch.multinomial(post, n, replacement=True, generator=generator)
                images.append(self.world.images[idx])
        stacked = torch.stack(images, dim=1)  # (N, B, 1, H, W)
        return Completions(stacked, torch.stack(logw, dim=1) if self.exact else None)


def exact_mutual_information(world, observed, mask, candidate_masks, label_indices):
    """``sum_l I(v_l; y_c | x * m)`` for each candidate, by enumeration (nats)."""
    post = world.consistent(observed[0], mask[0])

    def h(p):
        p = min(max(p, 1e-12), 1 - 1e-12)
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    out = []
    for cm in candidate_masks:
        m_c = torch.maximum(mask[0], cm)
        groups: dict[bytes, torch.Tensor] = {}
        for k in (post > 0).nonzero().squeeze(1).tolist():
            key = (world.images[k] * m_c).numpy().tobytes()
            groups.setdefault(key, torch.zeros_like(post))[k] = post[k]
        mi = 0.0
        for li in label_indices:
            prior_p = float(post @ world.state_labels[:, li])
            mi += h(prior_p)
            for g in groups.values():
                py = float(g.sum())
                mi -= py * h(float(g @ world.state_labels[:, li]) / py)
        out.append(mi)
    return torch.tensor(out, dtype=torch.float64)


class NaNClassifier(BayesClassifier):
    """A Bayes classifier broken like a checkpoint with a NaN weight: NaN probabilities for every
    row whose mask covers at least ``from_pixels`` pixels (0: always)."""

    def __init__(self, world: ToyWorld, from_pixels: int = 0):
        super().__init__(world, name="nan")
        self.from_pixels = from_pixels

    def predict(self, observed, mask):
        out = super().predict(observed, mask)
        broken = mask.flatten(1).sum(1) >= self.from_pixels
        return out.masked_fill(broken[:, None], math.nan)


class NaNSampler(PosteriorSampler):
    """Exact posterior completions with NaN in every unobserved pixel."""

    name = "nan"

    def sample(self, observed, mask, n, generator=None):
        comps = super().sample(observed, mask, n, generator)
        return Completions(comps.images.masked_fill(mask[None] < 0.5, math.nan), comps.log_weights)


class ToyDataset(torch.utils.data.Dataset):
    """Images drawn from the world's prior (seeded); items like datasets' ImageDataset."""

    def __init__(self, world: ToyWorld, n=6, seed=1):
        self.world = world
        self.states = world.sample_states(n, torch.Generator().manual_seed(seed))
        self.labels = world.labels
        self.ids = [f"toy-{i:03d}" for i in range(n)]

    def __len__(self):
        return len(self.states)

    def __getitem__(self, i):
        k = int(self.states[i])
        return {
            "idx": self.ids[i],
            "img": self.world.images[k].clone(),
            "lab": self.world.state_labels[k].float(),
        }

    def describe(self):
        return {"images": "toy", "n": len(self)}


class FakeStore:
    """In-memory stand-in for boed.store.Store's write API (for tests that need no database)."""

    def __init__(self):
        self.runs, self.sessions, self.steps, self.arrays = {}, {}, [], {}

    def create_run(self, config, **kw):
        run_id = f"run{len(self.runs)}"
        self.runs[run_id] = {"config": config, "status": "running", **kw}
        return run_id

    def start_session(self, run_id, *, image_id, image_index, policy, true_labels, findings=None):
        sid = len(self.sessions) + 1
        self.sessions[sid] = dict(
            run_id=run_id,
            image_id=image_id,
            image_index=image_index,
            policy=policy,
            true_labels=true_labels,
            status="running",
            error=None,
            findings=findings,
        )
        return sid

    def log_step(self, session_id, **kw):
        self.steps.append({"session_id": session_id, **kw})

    def save_array(self, session_id, step, name, array):
        self.arrays[(session_id, step, name)] = array

    def finish_session(self, session_id, *, status="done", error=None):
        self.sessions[session_id].update(status=status, error=error)

    def finish_run(self, run_id, *, status, timings=None, error=None):
        self.runs[run_id].update(status=status, timings=timings, error=error)

    def session_counts(self, run_id):
        counts = {}
        for s in self.sessions.values():
            if s["run_id"] == run_id:
                counts[s["status"]] = counts.get(s["status"], 0) + 1
        return counts

    def resume_plan(self, run_id, *, retry_failed=False):
        done = set()
        for sid, s in list(self.sessions.items()):
            if s["run_id"] != run_id:
                continue
            if s["status"] == "done" or (s["status"] == "failed" and not retry_failed):
                done.add((s["image_id"], s["policy"]))
            else:
                del self.sessions[sid]
                self.steps = [r for r in self.steps if r["session_id"] != sid]
        return done

    def run_config(self, run_id):
        return self.runs[run_id]["config"]
