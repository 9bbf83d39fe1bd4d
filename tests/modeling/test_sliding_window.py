"""SlidingWindowSegmentor: window extraction against naive crops, centring, training."""

import unittest

import numpy as np
import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from torch import nn

from seg2.modeling.sliding_window import (
    SlidingWindowSegmentor,
    WindowClassifier,
    extract_windows,
    pad_for_windows,
)
from seg2_testing import get_seg2_cfg

K = 7


def make_cfg(window: int = 9, pixels: int = 16, batch: int = 50):
    cfg = get_seg2_cfg("Synthetic-SemanticSegmentation/sliding_window_synthetic.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SEG2.SLIDING_WINDOW.WINDOW = window
    cfg.MODEL.SEG2.SLIDING_WINDOW.PIXELS_PER_IMAGE = pixels
    cfg.MODEL.SEG2.SLIDING_WINDOW.BATCH = batch
    cfg.MODEL.SEG2.SLIDING_WINDOW.CONV_CHANNELS = [4, 8]
    cfg.MODEL.SEG2.SLIDING_WINDOW.FC_DIM = 16
    return cfg


def make_inputs(sizes=((13, 11), (10, 12)), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for h, w in sizes:
        sem = torch.randint(0, K, (h, w), generator=g)
        sem[0] = 255
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        inputs.append({"image": image, "sem_seg": sem, "file_name": f"img_{h}x{w}.png"})
    return inputs


class CentreStub(nn.Module):
    """'Classifier' that returns the centre pixel of each window as its K logits."""

    def forward(self, windows):
        r = windows.shape[-1] // 2
        return windows[:, :, r, r]


class TestWindowExtraction(unittest.TestCase):
    def test_hand_worked_3x3_windows(self):
        # 1 x 3 x 4 image with values 0..11; reflect padding by 1 mirrors without the edge.
        image = torch.arange(12.0).view(1, 3, 4)
        padded = pad_for_windows(image, 3)
        windows = extract_windows(padded, torch.tensor([0, 1, 2]), torch.tensor([0, 2, 3]), 3)
        self.assertEqual(tuple(windows.shape), (3, 1, 3, 3))
        # centre (0, 0): row -1 mirrors row 1, column -1 mirrors column 1
        torch.testing.assert_close(windows[0, 0], torch.tensor([[5.0, 4, 5], [1, 0, 1], [5, 4, 5]]))
        # centre (1, 2): fully inside
        torch.testing.assert_close(
            windows[1, 0], torch.tensor([[1.0, 2, 3], [5, 6, 7], [9, 10, 11]])
        )
        # centre (2, 3): row 3 mirrors row 1, column 4 mirrors column 2
        torch.testing.assert_close(
            windows[2, 0], torch.tensor([[6.0, 7, 6], [10, 11, 10], [6, 7, 6]])
        )

    def test_equals_naive_crop_of_numpy_reflect_pad(self):
        rng = np.random.default_rng(0)
        image = rng.standard_normal((2, 7, 9)).astype(np.float32)
        window, r = 5, 2
        ref = np.pad(image, ((0, 0), (r, r), (r, r)), mode="reflect")
        ys, xs = np.meshgrid(np.arange(7), np.arange(9), indexing="ij")
        ys, xs = ys.ravel(), xs.ravel()
        got = extract_windows(
            pad_for_windows(torch.from_numpy(image), window),
            torch.from_numpy(ys),
            torch.from_numpy(xs),
            window,
        ).numpy()
        for b, (y, x) in enumerate(zip(ys, xs)):
            np.testing.assert_array_equal(got[b], ref[:, y : y + window, x : x + window])
            np.testing.assert_array_equal(got[b][:, r, r], image[:, y, x])

    def test_window_larger_than_image_is_mirrored_repeatedly(self):
        image = torch.arange(6.0).view(1, 2, 3)
        windows = extract_windows(
            pad_for_windows(image, 7), torch.tensor([1]), torch.tensor([2]), 7
        )
        self.assertEqual(tuple(windows.shape), (1, 1, 7, 7))
        self.assertEqual(windows[0, 0, 3, 3].item(), 5.0)

    def test_even_window_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "WINDOW"):
            pad_for_windows(torch.zeros(1, 4, 4), 4)
        cfg = make_cfg(window=8)
        with self.assertRaisesRegex(ValueError, "MODEL.SEG2.SLIDING_WINDOW.WINDOW"):
            build_model(cfg)


class TestSlidingWindowSegmentor(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def test_registered(self):
        self.assertIs(META_ARCH_REGISTRY.get("SlidingWindowSegmentor"), SlidingWindowSegmentor)
        model = build_model(make_cfg())
        self.assertIsInstance(model.classifier, WindowClassifier)

    def test_inference_shape_and_output_resize(self):
        model = build_model(make_cfg()).eval()
        inputs = make_inputs()
        inputs[1]["height"], inputs[1]["width"] = 20, 24  # resized like SemanticSegmentor
        with torch.no_grad():
            out = model(inputs)
        self.assertEqual(tuple(out[0]["sem_seg"].shape), (K, 13, 11))
        self.assertEqual(tuple(out[1]["sem_seg"].shape), (K, 20, 24))

    def test_centre_stub_recovers_the_label_map_exactly(self):
        # Image channels = one-hot labels: the centre pixel's value *is* the class scores, so
        # any off-by-one in the window placement or the pixel order breaks the equality.
        cfg = make_cfg(window=5, batch=7)  # batch not dividing H * W
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
        cfg.MODEL.PIXEL_MEAN = [0.0, 0.0, 0.0]
        cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
        model = build_model(cfg).eval()
        model.classifier = CentreStub()
        labels = torch.randint(0, 3, (9, 14), generator=torch.Generator().manual_seed(1))
        image = nn.functional.one_hot(labels, 3).permute(2, 0, 1).float() * 255
        with torch.no_grad():
            scores = model([{"image": image}])[0]["sem_seg"]
        torch.testing.assert_close(scores, image)
        self.assertTrue(torch.equal(scores.argmax(0), labels))

    def test_training_loss_is_finite_and_samples_only_labelled_pixels(self):
        model = build_model(make_cfg(pixels=16)).train()
        seen = []
        forward = model.classifier.forward

        def spy(windows):
            seen.append(windows.shape[0])
            return forward(windows)

        model.classifier.forward = spy
        losses = model(make_inputs())
        self.assertEqual(set(losses), {"loss_sem_seg_ce"})
        self.assertTrue(torch.isfinite(losses["loss_sem_seg_ce"]))
        self.assertEqual(seen, [32])  # 16 per image

        # an image with fewer labelled pixels than requested gives all of them, once
        inputs = make_inputs(sizes=((6, 6),))
        inputs[0]["sem_seg"][:] = 255
        inputs[0]["sem_seg"][2, 3] = 4
        seen.clear()
        model(inputs)
        self.assertEqual(seen, [1])

    def test_sampled_windows_are_labelled_by_their_centre(self):
        # With the centre stub, one-hot images and CE, the loss is the CE of logits that
        # equal the one-hot target * 255 -> ~0; a mis-centred sampler would give large CE.
        cfg = make_cfg(window=5, pixels=20)
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
        cfg.MODEL.PIXEL_MEAN = [0.0, 0.0, 0.0]
        cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
        model = build_model(cfg).train()
        model.classifier = CentreStub()
        labels = torch.randint(0, 3, (8, 8), generator=torch.Generator().manual_seed(2))
        image = nn.functional.one_hot(labels, 3).permute(2, 0, 1).float() * 255
        sem = labels.clone()
        sem[:2] = 255
        loss = model([{"image": image, "sem_seg": sem}])["loss_sem_seg_ce"]
        self.assertLess(loss.item(), 1e-6)
        # sanity: shifting the labels by one column makes the same check fail
        shifted = torch.roll(sem, 1, dims=1)
        self.assertGreater(
            model([{"image": image, "sem_seg": shifted}])["loss_sem_seg_ce"].item(), 1.0
        )

    def test_training_step_reduces_loss_on_a_fixed_batch(self):
        model = build_model(make_cfg(pixels=64)).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        inputs = make_inputs()
        # fixed pixels: same sampling each step
        first = None
        for _ in range(15):
            torch.manual_seed(0)
            loss = model(inputs)["loss_sem_seg_ce"]
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.assertTrue(all(p.grad is not None for p in model.classifier.parameters()))
        torch.manual_seed(0)
        self.assertLess(model(inputs)["loss_sem_seg_ce"].item(), first)

    def test_weighted_ce_uses_the_mapper_weights(self):
        cfg = make_cfg(pixels=10)
        cfg.MODEL.SEG2.LOSS.NAMES = ["weighted_ce"]
        model = build_model(cfg).train()
        inputs = make_inputs()
        with self.assertRaisesRegex(ValueError, "WEIGHT_MAP"):
            model(inputs)
        for x in inputs:
            x["sem_seg_weights"] = torch.zeros(x["sem_seg"].shape)
        self.assertEqual(model(inputs)["loss_sem_seg_weighted_ce"].item(), 0.0)
        for x in inputs:
            x["sem_seg_weights"] = torch.ones(x["sem_seg"].shape)
        self.assertGreater(model(inputs)["loss_sem_seg_weighted_ce"].item(), 0.0)

    def test_all_pixels_ignored_gives_zero_loss_with_graph(self):
        model = build_model(make_cfg()).train()
        inputs = make_inputs(sizes=((6, 7),))
        inputs[0]["sem_seg"][:] = 255
        loss = model(inputs)["loss_sem_seg_ce"]
        self.assertEqual(loss.item(), 0.0)
        loss.backward()

    def test_bad_target_shape_names_the_file(self):
        model = build_model(make_cfg()).train()
        inputs = make_inputs()
        inputs[0]["sem_seg"] = inputs[0]["sem_seg"][:-1]
        with self.assertRaisesRegex(ValueError, "img_13x11.png"):
            model(inputs)


if __name__ == "__main__":
    unittest.main()
