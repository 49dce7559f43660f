"""Colour images end to end in the library: config rules, 8-bit models, IS against AIS, sources, plots."""

from __future__ import annotations

import io
import math
import tarfile

import numpy as np
import pytest
import torch

from vae.config import DatasetConfig, ModelConfig, load_pipelines
from vae.data.datasets import load_split, read_manifest
from vae.errors import ConfigError, DataError, VAEError
from vae.evaluate.estimators import annealed_importance_sampling, estimate_log_likelihood
from vae.data.ingest import ingest
from vae.models.likelihoods import LOG_256
from vae.models.model import build_model

RNG = np.random.default_rng(15)
TRAIN_10 = [f"data_batch_{i}.bin" for i in range(1, 6)]


def _pipelines(tmp_path, dataset: str, model: str):
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        f"pipelines:\n  p:\n    dataset: {{name: d, source: 'sklearn:sample-patches', {dataset}}}\n"
        f"    model: {{{model}}}\n    registry: {{model_name: m}}\n"
    )
    return load_pipelines(path)["p"]


# -- Config


def test_eight_bit_likelihoods_need_unbinarised_8bit_pixels(tmp_path):
    config = _pipelines(tmp_path, "binarize: none", "likelihood: logistic_mixture, components: 3, channels: [8, 8, 8]")
    assert config.model.eight_bit and config.model.channels == (8, 8, 8)
    with pytest.raises(ConfigError, match=r"likelihood 'categorical' is a probability of 8-bit pixels: set "):
        _pipelines(tmp_path, "binarize: threshold", "likelihood: categorical")
    with pytest.raises(ConfigError, match=r"dataset.max_value must be 255 or unset \(got 16\)"):
        _pipelines(tmp_path, "binarize: none, max_value: 16", "likelihood: discretized_logistic")
    with pytest.raises(ConfigError, match=r"dequantize is a probability of 8-bit pixels"):
        _pipelines(tmp_path, "binarize: dynamic", "likelihood: gaussian, dequantize: true")
    with pytest.raises(ConfigError, match=r"dequantize applies to the gaussian likelihood only"):
        _pipelines(tmp_path, "binarize: none", "likelihood: categorical, dequantize: true")
    with pytest.raises(ConfigError, match=r"field 'model.channels'"):
        _pipelines(tmp_path, "binarize: none", "likelihood: categorical, channels: []")
    assert set(load_pipelines("pipelines.yaml")) >= {"digits", "fashion-mnist", "colour-patches"}


def test_an_8bit_model_on_a_dataset_of_other_pixels_fails_before_training(tmp_path):
    """digits hold 0..16: the manifest says so, and training refuses before Ray starts (no worker, no run)."""
    from vae.train.checks import check_pixel_range

    digits = ingest(DatasetConfig(name="digits8", source="sklearn:digits"), root=tmp_path)
    patches = ingest(DatasetConfig(name="patches8", source="sklearn:sample-patches"), root=tmp_path)
    config = _pipelines(tmp_path, "binarize: none", "likelihood: discretized_logistic")
    with pytest.raises(VAEError, match=r"^dataset 'digits8' holds pixels 0..16 \(its manifest's value_range\): model "):
        check_pixel_range(config, digits)
    check_pixel_range(config, patches)  # 0..255: accepted
    check_pixel_range(_pipelines(tmp_path, "binarize: dynamic", "likelihood: bernoulli"), digits)  # not 8-bit: accepted


# -- Models


def _zero(model):
    with torch.no_grad():
        for parameter in model.parameters():  # q(z|x) = p(z) and p(x|z) uniform: every weight is 1
            parameter.zero_()
    return model


def test_a_uniform_categorical_conv_model_scores_exactly_8_bits_per_dim():
    model = _zero(
        build_model(
            ModelConfig(architecture="conv", likelihood="categorical", latent_dim=3, channels=(4,)), 75, (3, 5, 5)
        )
    )
    x = torch.randint(0, 256, (6, 75)).float() / 255  # (B, D) as prepare_inputs gives them
    estimate = estimate_log_likelihood(model, x, 7)
    summary = estimate.summary(model.data_dim, model.bits_per_dim_kind)
    assert summary["bits_per_dim_kind"] == "8bit"
    assert summary["bits_per_dim"] == pytest.approx(8.0, abs=1e-5)  # logits 0: 1/256 each (float32 sums)
    assert estimate.log_px.numpy() == pytest.approx(np.full(6, -75 * LOG_256), abs=1e-3)


def test_eight_bit_models_refuse_inputs_that_are_not_v_over_255():
    model = build_model(ModelConfig(likelihood="discretized_logistic", latent_dim=2, hidden=(8,)), 12, (3, 2, 2))
    with pytest.raises(VAEError, match=r"inputs are not pixel values v/255"):
        model.log_likelihood(torch.full((1, 12), 3.0 / 16.0), torch.zeros(1, 2))  # a 0..16 dataset


def test_dequantised_gaussian_is_the_density_of_x_tilde_minus_d_log_256():
    model = build_model(ModelConfig(likelihood="gaussian", dequantize=True, latent_dim=2, hidden=(8,)), 12)
    v = torch.randint(0, 256, (4, 12)).float()
    u = torch.rand(4, 12)
    z = torch.randn(3, 4, 2)
    expected = torch.distributions.Normal(model.decode(z), torch.exp(model.log_std)).log_prob((v + u) / 256).sum(-1)
    got = model.log_likelihood(v / 255, z, noise=u)
    assert torch.allclose(got, expected - 12 * math.log(256), atol=1e-4)
    assert model.bits_per_dim_kind == "dequantized"
    assert build_model(ModelConfig(likelihood="gaussian"), 12).bits_per_dim_kind == "continuous"


def test_importance_sampling_agrees_with_ais_for_a_discretised_logistic():
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(latent_dim=2, hidden=(16,), activation="tanh", likelihood="discretized_logistic"), 12, (3, 2, 2)
    ).eval()
    with torch.no_grad():
        x = model.sample_image(torch.randn(4, 2))  # (4, 12) on the v/255 grid
    is_estimate = estimate_log_likelihood(model, x, 5000, seed=1)
    ais = annealed_importance_sampling(model, x, steps=100, chains=16, leapfrog_steps=5, seed=1)
    # Two estimators of the same log p(x) (about -43 nats here): IS from q(z|x), AIS from p(z) by HMC.
    assert ais.mean_log_px == pytest.approx(is_estimate.mean_log_px, abs=0.1)


# -- Sources


def _record_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    return b"".join(bytes([int(labels[i])]) + images[i].tobytes() for i in range(len(images)))  # channel-major


def _cifar_files(test_rows: int = 3) -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    files, train = {}, []
    for name in TRAIN_10:
        images = RNG.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
        files[name] = _record_bytes(images, RNG.integers(0, 10, 2))
        train.append(images)
    test = RNG.integers(0, 256, size=(test_rows, 3, 32, 32), dtype=np.uint8)
    files["test_batch.bin"] = _record_bytes(test, RNG.integers(0, 10, test_rows))
    return files, np.concatenate(train), test


def test_cifar_binary_ingests_to_the_official_split_channel_major(tmp_path):
    files, train, test = _cifar_files()
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ref = ingest(DatasetConfig(name="cifar", source=str(archive), validation_fraction=0.2), root=tmp_path / "store")
    manifest = read_manifest(ref.path)
    assert manifest["shape"] == [3, 32, 32] and manifest["layout"] == "CHW" and manifest["split"] == "official"
    assert manifest["rows"] == {"train": 8, "validation": 2, "test": 3} and manifest["value_range"] == [0.0, 255.0]
    stored_test, _ = load_split(ref.path, "test")
    np.testing.assert_array_equal(stored_test, test.reshape(3, -1))
    stored = np.concatenate([load_split(ref.path, s)[0] for s in ("train", "validation")])
    assert sorted(map(bytes, stored)) == sorted(map(bytes, train.reshape(10, -1)))


def test_a_truncated_cifar_record_is_one_line_and_nothing_is_written(tmp_path):
    files, _, _ = _cifar_files()
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data[:-5] if name == "test_batch.bin" else data)
    store = tmp_path / "store"
    with pytest.raises(DataError, match=r"test_batch.bin: truncated CIFAR-10 batch: 9214 bytes") as error:
        ingest(DatasetConfig(name="cifar", source=str(tmp_path)), root=store)
    assert "\n" not in str(error.value)
    assert not store.exists() or not any(store.rglob("*.parquet"))


def test_the_pickled_cifar_is_refused_naming_the_binary_version(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(
        DataError, match=r"pickles are not loaded \(expected the binary version, cifar-10-binary.tar.gz"
    ):
        ingest(DatasetConfig(name="cifar", source=str(tmp_path)), root=tmp_path / "store")


def test_npz_channels_last_and_first_store_the_same_channel_major_rows(tmp_path):
    images = RNG.integers(0, 256, size=(5, 3, 6, 7), dtype=np.uint8)  # (N, C, H, W)
    np.savez(tmp_path / "first.npz", x=images)
    np.savez(tmp_path / "last.npz", x=images.transpose(0, 2, 3, 1))  # (N, H, W, C)
    stored = []
    for name in ("first", "last"):
        config = DatasetConfig(name=name, source=str(tmp_path / f"{name}.npz"), test_fraction=0.4)
        ref = ingest(config, root=tmp_path / "store")
        assert read_manifest(ref.path)["shape"] == [3, 6, 7] and read_manifest(ref.path)["layout"] == "CHW"
        stored.append(np.concatenate([load_split(ref.path, s)[0] for s in ("train", "validation", "test")]))
    np.testing.assert_array_equal(stored[0], stored[1])
    assert sorted(map(bytes, stored[0])) == sorted(map(bytes, images.reshape(5, -1)))


def test_rgb_image_folders_are_stored_channel_major(tmp_path):
    from PIL import Image

    images = RNG.integers(0, 256, size=(2, 5, 4, 3), dtype=np.uint8)  # (N, H, W, 3) as Pillow holds them
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    ref = ingest(DatasetConfig(name="rgb", source=str(tmp_path), test_fraction=0.5), root=tmp_path / "store")
    assert read_manifest(ref.path)["shape"] == [3, 5, 4] and read_manifest(ref.path)["layout"] == "CHW"
    stored = np.concatenate([load_split(ref.path, s)[0] for s in ("train", "validation", "test")])
    assert sorted(map(bytes, stored)) == sorted(map(bytes, images.transpose(0, 3, 1, 2).reshape(2, -1)))


def test_sample_patches_keep_train_and_test_regions_apart(tmp_path):
    from sklearn.datasets import load_sample_images

    config = DatasetConfig(name="patches", source="sklearn:sample-patches", validation_fraction=0.1)
    ref = ingest(config, root=tmp_path)
    manifest = read_manifest(ref.path)
    # 2 photos x 50 x 57 training patches (stride 8), 2 x 25 x 9 test patches (stride 16)
    assert manifest["rows"] == {"train": 5130, "validation": 570, "test": 450}
    assert manifest["shape"] == [3, 32, 32] and manifest["layout"] == "CHW"
    train, train_labels = load_split(ref.path, "train")
    validation, validation_labels = load_split(ref.path, "validation")
    test, test_labels = load_split(ref.path, "test")
    assert set(train_labels) == set(validation_labels) == set(test_labels) == {0, 1}  # both photographs
    china, flower = load_sample_images().images
    np.testing.assert_array_equal(test[0].reshape(3, 32, 32), china[:32, 480:512].transpose(2, 0, 1))
    np.testing.assert_array_equal(test[225 + 10].reshape(3, 32, 32), flower[16:48, 496:528].transpose(2, 0, 1))
    # No test pixel in training: every training patch lies left of column 480 (the rightmost starts at 448).
    seen = np.concatenate([train, validation]).reshape(-1, 3, 32, 32)
    left = {bytes(china[r : r + 32, c : c + 32].transpose(2, 0, 1)) for r in range(0, 396, 8) for c in range(0, 449, 8)}
    left |= {
        bytes(flower[r : r + 32, c : c + 32].transpose(2, 0, 1)) for r in range(0, 396, 8) for c in range(0, 449, 8)
    }
    assert {bytes(p) for p in seen} <= left and len(seen) == 5700
    assert not {bytes(r) for r in test} & {bytes(r) for r in np.concatenate([train, validation])}


# -- Plots


def test_colour_grids_tile_rgb_images_in_place():
    from vae.registry.plots import _grid

    images = np.stack([np.full((3, 2, 2), v) * np.array([1.0, 0.5, 0.0])[:, None, None] for v in (0.2, 0.8)])
    canvas = _grid(images.reshape(2, 12), (2, 2), columns=2)  # (H, W) alone: channels from the size
    assert canvas.shape == (2, 5, 3)
    np.testing.assert_allclose(canvas[0, 0], [0.2, 0.1, 0.0])
    np.testing.assert_allclose(canvas[1, 4], [0.8, 0.4, 0.0])
    np.testing.assert_allclose(canvas[:, 2], 1.0)  # the white gutter
