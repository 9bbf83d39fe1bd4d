"""seg2's ResizeShortestEdge: Detectron2's, except that a resize to the same size is a no-op
(same random draw, same outputs)."""
import numpy as np
from detectron2.data import transforms as T

from seg2.data.augmentations import ResizeShortestEdge


def test_same_size_is_a_noop_with_the_same_random_draws():
    image = np.random.RandomState(0).randint(0, 255, (128, 96, 3), dtype=np.uint8)
    ours = ResizeShortestEdge((96, 112, 128), 256, "choice")
    theirs = T.ResizeShortestEdge((96, 112, 128), 256, "choice")
    kinds = set()
    for seed in range(30):
        np.random.seed(seed)
        a = ours.get_transform(image)
        after_ours = np.random.rand()
        np.random.seed(seed)
        b = theirs.get_transform(image)
        assert np.random.rand() == after_ours  # the same RNG use: the data stream is unchanged
        assert np.array_equal(a.apply_image(image), b.apply_image(image))
        if (b.h, b.w) == (b.new_h, b.new_w):
            assert isinstance(a, T.NoOpTransform)
        else:
            assert isinstance(a, T.ResizeTransform)
        kinds.add(type(a).__name__)
    assert kinds == {"NoOpTransform", "ResizeTransform"}
