"""Few-shot classifiers on embedded episodes, batched over episodes.

Shapes: support (E, n, d), support_labels (E, n) in 0..K-1, query (E, q, d) -> predictions (E, q).

`logistic_regression` solves the same convex problem as scikit-learn's
LogisticRegression(C, lbfgs, L2 on weights, unpenalised intercept, multinomial):
    min_{W,b}  C * sum_i CE(W z_i + b, y_i) + 0.5 * ||W||^2.
The optimal W lies in the span of the support vectors (representer theorem), so when n < d we
solve in an orthonormal basis of that span: K*(n+1) unknowns instead of K*(d+1). Newton's method
with a backtracking line search then converges to machine precision in a few iterations, for
all episodes of a batch at once, on CPU or CUDA.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from util import Registry


def _span_coordinates(support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates of support and query vectors in an orthonormal basis of span(support)."""
    n, d = support.shape[1], support.shape[2]
    if d <= n:
        return support, query
    gram = support @ support.transpose(1, 2)  # (E, n, n)
    eigval, eigvec = torch.linalg.eigh(gram)
    keep = eigval > eigval[:, -1:].clamp_min(0) * 1e-12 * n  # drop the numerically null directions
    inv_sqrt = torch.where(keep, eigval.clamp_min(1e-300).rsqrt(), torch.zeros_like(eigval))
    basis_s = eigvec * (eigval.clamp_min(0).sqrt() * keep)[:, None, :]  # = support @ V
    basis_q = (query @ support.transpose(1, 2)) @ eigvec * inv_sqrt[:, None, :]  # = query @ V
    return basis_s, basis_q


class _Problem:
    """One batch of episodes' objective  c * sum_i CE(theta z_i, y_i) + 0.5 * ||theta * ridge||^2,
    with z_i = [coordinates, 1] so the last column of theta is the unpenalised intercept."""

    def __init__(self, z: torch.Tensor, onehot: torch.Tensor, c: float) -> None:
        self.z, self.onehot, self.c = z, onehot, c
        self.ridge = torch.ones(1, 1, z.shape[2], dtype=z.dtype, device=z.device)
        self.ridge[..., -1] = 0
        # The softmax is invariant to shifting all intercepts together; a negligible damping on
        # them keeps the Newton system positive definite without moving the predictions.
        self.damping = (1 - self.ridge) * 1e-9

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        logits = self.z @ theta.transpose(1, 2)
        ce = torch.logsumexp(logits, dim=2) - (logits * self.onehot).sum(2)
        return self.c * ce.sum(1) + 0.5 * (theta.pow(2) * self.ridge).sum((1, 2))

    def gradient(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(self.z @ theta.transpose(1, 2), dim=2)  # (E, n, K)
        return self.c * (p - self.onehot).transpose(1, 2) @ self.z + theta * self.ridge, p

    def hessian_times(self, p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H v with H = c * sum_i (diag(p_i) - p_i p_i^T) (x) z_i z_i^T + ridge, never formed."""
        u = self.z @ v.transpose(1, 2)  # (E, n, K)
        pu = p * u
        s = pu - p * pu.sum(2, keepdim=True)
        return self.c * s.transpose(1, 2) @ self.z + v * (self.ridge + self.damping)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((1, 2))


def _newton_direction(problem: _Problem, p: torch.Tensor, grad: torch.Tensor, max_cg: int) -> torch.Tensor:
    """Solve H d = -grad by conjugate gradients, batched; the inexact-Newton forcing term
    min(0.5, sqrt(|g|)) * |g| gives superlinear convergence of the outer iteration."""
    g_norm = _dot(grad, grad).sqrt()
    target = torch.minimum(torch.full_like(g_norm, 0.5), g_norm.sqrt()) * g_norm
    d = torch.zeros_like(grad)
    r = -grad
    direction = r.clone()
    rs = _dot(r, r)
    active = rs.sqrt() > target
    for _ in range(max_cg):
        if not active.any():
            break
        h_dir = problem.hessian_times(p, direction)
        curvature = _dot(direction, h_dir)
        alpha = torch.where(active, rs / curvature.clamp_min(1e-300), torch.zeros_like(rs))[:, None, None]
        d = d + alpha * direction
        r = r - alpha * h_dir
        rs_new = _dot(r, r)
        active = active & (rs_new.sqrt() > target)
        direction = r + (rs_new / rs.clamp_min(1e-300))[:, None, None] * direction
        rs = rs_new
    return d


@torch.no_grad()
def logistic_regression_scores(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                               n_classes: int, *, c: float = 1.0, max_iter: int = 100,
                               tol: float = 1e-7) -> torch.Tensor:
    """Multinomial L2 logistic regression per episode; returns the query decision scores (E, q, K)."""
    z_s, z_q = _span_coordinates(support.double(), query.double())
    e, n, r = z_s.shape
    z = torch.cat([z_s, z_s.new_ones(e, n, 1)], dim=2)
    problem = _Problem(z, torch.nn.functional.one_hot(support_labels.long(), n_classes).to(z.dtype), c)
    theta = z.new_zeros(e, n_classes, r + 1)
    f = problem.value(theta)
    for _ in range(max_iter):
        grad, p = problem.gradient(theta)
        active = grad.flatten(1).abs().amax(1) >= tol  # converged episodes take no further steps
        if not active.any():
            break
        step = _newton_direction(problem, p, grad * active[:, None, None], max_cg=4 * n_classes * (r + 1))
        slope = _dot(grad, step)
        t = torch.ones_like(f)
        for _ in range(40):  # Armijo backtracking, per episode
            f_new = problem.value(theta + t[:, None, None] * step)
            # Near the optimum f stops decreasing within rounding: accept those steps too.
            accepted = (f_new <= f + 1e-4 * t * slope) | (f_new - f <= 1e-13 * f.abs())
            if accepted.all():
                break
            t = torch.where(accepted, t, t / 2)
        theta = theta + t[:, None, None] * step
        f = f_new
    z_query = torch.cat([z_q, z_q.new_ones(*z_q.shape[:2], 1)], dim=2)
    return z_query @ theta.transpose(1, 2)


@torch.no_grad()
def nearest_neighbour_scores(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                             n_classes: int) -> torch.Tensor:
    """Minus the Euclidean distance from each query to the nearest support vector of each class."""
    return _per_class_best(-torch.cdist(query, support), support_labels, n_classes)


@torch.no_grad()
def cosine_scores(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                  n_classes: int) -> torch.Tensor:
    """The largest cosine similarity of each query to a support vector of each class."""
    s = torch.nn.functional.normalize(support, dim=2)
    q = torch.nn.functional.normalize(query, dim=2)
    return _per_class_best(q @ s.transpose(1, 2), support_labels, n_classes)


def _per_class_best(similarity: torch.Tensor, support_labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(E, q, K): the largest of `similarity` (E, q, n) over each class's support vectors."""
    labels = support_labels[:, None, :].expand_as(similarity)
    best = similarity.new_full((*similarity.shape[:2], n_classes), -torch.inf)
    return best.scatter_reduce(2, labels.long(), similarity, reduce="amax")


def sklearn_logistic_regression_scores(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                                       n_classes: int) -> torch.Tensor:
    """The reference: scikit-learn's LogisticRegression per episode, as the official code calls it; its
    decision function (both columns of a two-class episode, whose sklearn form is one)."""
    from sklearn.linear_model import LogisticRegression

    scores = []
    for s, y, q in zip(support.cpu().numpy(), support_labels.cpu().numpy(), query.cpu().numpy()):
        clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000, random_state=0)
        clf.fit(s, y)
        decision = clf.decision_function(q)
        scores.append(np.stack([-decision, decision], 1) if decision.ndim == 1 else decision)
    return torch.from_numpy(np.stack(scores)).to(support_labels.device)


# A classifier: (support (E, n, d), support_labels (E, n) in 0..K-1, query (E, q, d), K) -> scores (E, q, K),
# higher meaning more likely; its prediction is the highest-scoring class. eval_fewshot.py --classifier and
# tools.classify --classifier offer every entry; the protocol's (the paper's, validation's, the final report's)
# is DEFAULT_CLASSIFIER.
CLASSIFIERS: Registry[Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]] = Registry("classifier")
CLASSIFIERS.register("LR", logistic_regression_scores)  # batched logistic regression, scikit-learn's problem
CLASSIFIERS.register("NN", nearest_neighbour_scores)
CLASSIFIERS.register("Cosine", cosine_scores)
CLASSIFIERS.register("sklearn", sklearn_logistic_regression_scores)
DEFAULT_CLASSIFIER = "LR"


def classify(name: str, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
             n_classes: int) -> torch.Tensor:
    """Query predictions (E, q) of the registered classifier `name`."""
    return CLASSIFIERS.get(name)(support, support_labels, query, n_classes).argmax(2)
