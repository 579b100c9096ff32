"""Search pictures (issue #23 item 10): `winning_ops.png` on an iteration axis (checkpoints 20,
22 and 40 are not evenly spaced), `alphas.png` on a diverging colour map centred on the uniform
weight 1/11 with each cell's weight over uniform written in (after a short search every
softmax weight is 0.09-0.10)."""
import numpy as np

from fad.nas.plots import alpha_heatmaps, png_bytes, png_rgb, winning_ops_figure

OPS = 11


def _one_hot_tower(op: int) -> list[np.ndarray]:
    """Softmaxed weights of a 3-node tower where `op` tops every edge."""
    tower = []
    for i in range(3):
        w = np.full((i + 2, OPS), 0.05)
        w[:, op] = 1.0 - 0.05 * (OPS - 1)
        tower.append(w)
    return tower


def test_winning_ops_columns_span_the_iterations_between_checkpoints():
    iterations = [20, 22, 40]
    history = {"box": [_one_hot_tower(op) for op in (0, 1, 2)]}
    fig = winning_ops_figure(iterations, history)
    image = png_rgb(png_bytes(fig))
    ax = fig.axes[0]
    (left, y), (right, _) = ax.transData.transform([(0, 0), (40, 0)])
    start = int(left) + 3  # past the axes' anti-aliased border
    row = image[image.shape[0] - int(round(y)), start: int(right) - 3]
    changes = np.nonzero(np.any(row[1:] != row[:-1], axis=1))[0] + start
    assert len(changes) == 2  # three colour runs: op 0, 1, 2
    at = ax.transData.inverted().transform([(x, y) for x in changes])[:, 0]
    assert np.allclose(at, [20, 22], atol=0.5)  # runs 20, 2 and 18 iterations wide


def test_alpha_heatmap_is_centred_on_uniform():
    rng = np.random.default_rng(0)
    tower = []
    for i in range(3):
        logits = rng.normal(0, 0.02, size=(i + 2, OPS))
        tower.append(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    weights = np.concatenate(tower)
    assert 0.085 < weights.min() and weights.max() < 0.1  # as weights all cells read 0.09-0.10
    fig = alpha_heatmaps({"box": tower})
    ax = fig.axes[0]
    image = ax.images[0]
    assert np.isclose(image.norm(1 / OPS), 0.5)
    low, high = image.to_rgba(weights.min()), image.to_rgba(weights.max())
    assert high[0] > high[2] + 0.3 and low[2] > low[0] + 0.3  # red above uniform, blue below
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == f"{weights[0, 0] * OPS:.2f}"  # weight over uniform, e.g. 1.03
    assert len(set(texts)) > 5
