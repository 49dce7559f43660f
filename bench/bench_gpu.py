"""GPU figures for BENCHMARKS.md: Ray Train on one GPU worker beside a plain graphed loop, GPU
evaluation at k=5000, a short fashion-mnist-gpu training with its test NLL, embedding rows/s.

One script, one JSON object on stdout (progress on stderr), at most ~6 minutes on one H100/H200:
  (a) Ray Train (TorchTrainer, 1 GPU worker, the project's worker loop) samples/s at batch 100 and
      1000, beside the same Stepper in a plain loop in this process (the ceiling);
  (b) importance-sampled log p(x) of 10,000 test images at k=5000, fp32 and TF32, noise included;
  (c) fashion-mnist-gpu trained for --train-minutes, then its test NLL at k=5000 on all test images;
  (d) `vae embed`'s Ray Data encoder actor on the GPU, rows/s.

Data: --data names a Fashion-MNIST source (the IDX folder, e.g. /usr/share/datasets/fashion-mnist
or a copy carried to the GPU machine) or an ingested dataset directory; without it, (a), (b) and
(d) use random images of Fashion-MNIST's shape and (c) is skipped. No MLflow or Prefect needed.

On the lent GPU machine (see DEVELOPERS.md; Ray and pydantic come from the device bundle):
    ../shared/tools/device-bundle ray pydantic pydantic-core annotated-types typing-inspection \
        typing-extensions jsonschema referencing rpds-py jsonschema-specifications tensorboardX pyyaml
    bash .device-bundle/install.sh && export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH && \
        python bench/bench_gpu.py --data fashion-idx > $OUT/gpu.json
On CPU, `--smoke` runs every part at toy sizes to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vae.config import DatasetConfig, EvaluationConfig, ModelConfig, PipelineConfig, RegistryConfig, TrainingConfig
from vae.data.ingest import ingest
from vae.data.datasets import DatasetRef, load_split, read_manifest
from vae.models.model import build_model
from vae.train.stepper import Objective, Stepper, make_optimizer

BURDA = ModelConfig(latent_dim=50, hidden=(200, 200), activation="tanh")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_dataset(rows: int, root: Path) -> DatasetRef:
    """Random 28x28 uint8 images ingested as a dataset (the throughput parts need only the shape)."""
    import numpy as np

    path = root / "random.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (rows, 28, 28), dtype=np.uint8))
    return ingest(
        DatasetConfig(
            name="random",
            source=str(path),
            split="random",
            test_fraction=0.1,
            validation_fraction=0.1,
            binarize="dynamic",
        ),
        root=root,
    )


def fashion_dataset(source: str, root: Path) -> DatasetRef:
    if (Path(source) / "manifest.json").exists():
        manifest = read_manifest(source)
        return DatasetRef(manifest["name"], manifest["version"], source, manifest["content_hash"])
    return ingest(
        DatasetConfig(name="fashion-mnist", source=source, split="official", binarize="dynamic", binarize_test_seed=0),
        root=root,
    )


def plain_graphed_loop(dataset: DatasetRef, batch: int, epochs: int, device: torch.device) -> dict:
    """The ceiling: the worker loop's Stepper (CUDA graph, data on the device) without Ray."""
    images, _ = load_split(dataset.path, "train")
    data = torch.from_numpy(images.copy()).to(device)  # (N, D) stored pixels, resident
    max_value = float(read_manifest(dataset.path)["value_range"][1])
    torch.manual_seed(0)
    model = build_model(BURDA, data.shape[1]).to(device)
    graphed = device.type == "cuda"
    optimizer = make_optimizer(model.parameters(), 1e-3, device, graphed)
    stepper = Stepper(
        Objective(model, "elbo", 1), optimizer, max_value=max_value, binarize="dynamic", device=device, graph=graphed
    )
    from vae.train.shards import resident_minibatches

    rates = []
    for epoch in range(epochs):
        generator = torch.Generator(device=device).manual_seed(epoch)
        stepper.start_epoch()
        started = time.perf_counter()
        for images_batch in resident_minibatches(data, batch, generator, stepper.drop_last):
            stepper.step(images_batch, 1.0)
        stepper.first_bad_step()  # the epoch's sync, as in the worker loop
        rates.append(stepper.sums[4].item() / (time.perf_counter() - started))
    return {
        "samples_per_second": statistics.median(rates[1:] or rates),
        "cuda_graph": stepper.graph is not None,
        "graph_error": stepper.graph_error,
    }


def ray_train(dataset: DatasetRef, batch: int, epochs: int, use_gpu: bool, storage: Path, **training) -> dict:
    from vae.train import driver

    config = PipelineConfig(
        name=f"bench-gpu-b{batch}",
        dataset=DatasetConfig(name=dataset.name, source="sklearn:digits", binarize="dynamic"),
        model=BURDA,
        training=TrainingConfig(
            **{
                "epochs": epochs,
                "batch_size": batch,
                "workers": 1,
                "cpus_per_worker": 2,
                "use_gpu": use_gpu,
                "checkpoint_every": epochs,
                "checkpoints_to_keep": 1,
                **training,
            }
        ),
        registry=RegistryConfig(model_name="bench-gpu"),
    )
    result = driver.train(config, dataset, storage_path=storage, echo=None)
    rates = [h["samples_per_second"] for h in result.history]
    # End to end: an epoch's wall time includes validation, metrics and the driver's queue (and every
    # checkpoint_every-th epoch Ray Train's report), which the step loop's rate leaves out.
    rows = int(read_manifest(dataset.path)["rows"]["train"])
    walls = [h["epoch_seconds"] for h in result.history[1:]] or [result.history[0]["epoch_seconds"]]
    return {
        "samples_per_second": statistics.median(rates[1:] or rates),
        "wall_samples_per_second": rows * len(walls) / sum(walls),
        "cuda_graph": bool(result.history[-1].get("cuda_graph")),
        "checkpoint": result.checkpoint,
        "epochs": result.epochs,
    }


def evaluation_seconds(checkpoint: str | None, dataset: DatasetRef, k: int, images: int, device: torch.device) -> dict:
    """Seconds to estimate log p(x) of `images` test images at k, fp32 and TF32 (noise included)."""
    from vae.models.model import load_checkpoint
    from vae.evaluate.evaluation import estimate_on_device, load_inputs

    model = load_checkpoint(checkpoint)[0] if checkpoint else build_model(BURDA, 784)
    x, _ = load_inputs(dataset.path, "test", model.data_dim, "dynamic", 0)
    x = x[:images].to(device)
    out = {"images": int(x.shape[0]), "k": k}
    for name, tf32 in (("fp32", False), ("tf32", True)):
        config = EvaluationConfig(k=k, use_gpu=device.type == "cuda", tf32=tf32)
        estimate_on_device(model, x[:256], config, device=device)  # warm-up: kernels, allocator
        synchronize(device)
        started = time.perf_counter()
        estimate = estimate_on_device(model, x, config, device=device)
        synchronize(device)
        out[f"{name}_seconds"] = time.perf_counter() - started
        out[f"{name}_nll"] = estimate.nll
    return out


def short_training(dataset: DatasetRef, minutes: float, k: int, storage: Path, pipelines: str, use_gpu: bool) -> dict:
    """fashion-mnist-gpu from pipelines.yaml, trained for `minutes`, evaluated at k on all test images."""
    from vae.train import driver
    from vae.config import load_pipeline
    from vae.evaluate.evaluation import score_checkpoint

    settings = load_pipeline("fashion-mnist-gpu", pipelines)
    # The LR decays 10x over the epochs a GPU fits in the budget (issue 11: 1e-3 -> 1e-4 over ~770).
    training = settings.training.model_copy(
        update={"max_minutes": minutes, "use_gpu": use_gpu, "lr_decay": 0.997, "checkpoint_every": 50}
    )
    settings = settings.model_copy(update={"training": training})
    started = time.perf_counter()
    result = driver.train(settings, dataset, storage_path=storage, echo=log)
    trained = time.perf_counter() - started
    evaluation = settings.evaluation.model_copy(update={"k": k, "use_gpu": use_gpu})
    started = time.perf_counter()
    scored = score_checkpoint(result.checkpoint, dataset.path, evaluation, settings.dataset.binarize)
    return {
        "train_wall_seconds": trained,
        "epochs": result.epochs,
        "step_samples_per_second": statistics.median(h["samples_per_second"] for h in result.history),
        "epoch_wall_seconds": statistics.median(h["epoch_seconds"] for h in result.history),
        "final_validation_elbo": result.history[-1]["validation_elbo"],
        "test_nll": scored.summary["nll"],
        "test_nll_stderr": scored.summary["nll_stderr"],
        "n": scored.summary["n"],
        "k": k,
        "evaluation_seconds": time.perf_counter() - started,
        "checkpoint": result.checkpoint,
    }


def embedding_rate(checkpoint: str | None, dataset: DatasetRef, work: Path, use_gpu: bool, batch: int) -> dict:
    from vae.jobs import embedding
    from vae.models.model import read_checkpoint_state

    if checkpoint:
        state = read_checkpoint_state(checkpoint)
    else:
        model = build_model(BURDA, 784)
        state = {"model": model.state_dict(), "model_config": BURDA.model_dump(mode="json"), "data_dim": 784}
    out = {}
    for name, options in (("ray_data_1_actor", {"workers": 1, "use_gpu": use_gpu}), ("plain", {"plain": True})):
        result = embedding.embed_dataset(
            state,
            dataset.path,
            work / "embedded.parquet",
            model_uri="bench",
            batch_size=batch,
            overwrite=True,
            binarize="dynamic",
            **options,
        )
        out[name] = {"rows": result.rows, "seconds": result.seconds, "rows_per_second": result.rows / result.seconds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="Fashion-MNIST IDX folder or an ingested dataset directory")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per throughput measurement")
    parser.add_argument("--train-minutes", type=float, default=2.5)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--eval-images", type=int, default=10000)
    parser.add_argument("--pipelines", default="pipelines.yaml")
    parser.add_argument("--parts", default="abcd", help="which parts to run, e.g. 'c' or 'ac'")
    parser.add_argument("--partial", help="write the report so far to this file after each part")
    parser.add_argument("--timed-done", help="touch this file once the timed parts (a), (b), (d) are over")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU: check the script, not the GPU")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.train_minutes, args.k, args.eval_images = 2, 0.1, 20, 300

    from vae.paths import quiet_environment

    quiet_environment()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_gpu = device.type == "cuda"
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    os.environ.setdefault("VAE_HOME", str(work / "home"))
    storage = work / "runs"
    report: dict = {
        "device": torch.cuda.get_device_name(0) if use_gpu else "cpu",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "smoke": args.smoke,
    }
    throughput_data = (
        fashion_dataset(args.data, work) if args.data else random_dataset(2000 if args.smoke else 70000, work)
    )
    from vae.cluster import ensure_ray

    ensure_ray(2)
    started = time.perf_counter()

    def save(part: str) -> None:
        """The report so far, after each part (a later failure or timeout keeps what was measured)."""
        report["total_seconds"] = time.perf_counter() - started
        if args.partial:
            Path(args.partial).write_text(json.dumps(report, indent=2, default=str))
        log(f"    done: {part} ({report['total_seconds']:.0f} s)")

    report["training"] = {}
    for batch in (100, 1000) if "a" in args.parts else ():
        log(f"(a) batch {batch}: plain graphed loop, then Ray Train with 1 {'GPU' if use_gpu else 'CPU'} worker")
        plain = plain_graphed_loop(throughput_data, batch, args.epochs, device)
        ray_run = ray_train(throughput_data, batch, args.epochs, use_gpu, storage)
        report["training"][f"batch_{batch}"] = {
            "plain_graphed": plain,
            "ray_train_1_worker": {k: v for k, v in ray_run.items() if k != "checkpoint"},
            "ray_over_plain": ray_run["samples_per_second"] / plain["samples_per_second"],
        }
        log(f"    plain {plain['samples_per_second']:,.0f}/s, Ray {ray_run['samples_per_second']:,.0f}/s")
        save(f"(a) batch {batch}")

    # The timed parts first (an untrained model costs the same as a trained one), then (c), the long one.
    if "b" in args.parts:
        log(f"(b) evaluation: {args.eval_images} test images at k={args.k}, fp32 and TF32")
        report["evaluation"] = evaluation_seconds(None, throughput_data, args.k, args.eval_images, device)
        save("(b) evaluation")
    if "d" in args.parts:
        log("(d) embedding rows/s")
        report["embedding"] = embedding_rate(None, throughput_data, work, use_gpu, 65536)
        save("(d) embedding")

    if args.timed_done:
        Path(args.timed_done).touch()  # a caller may start other GPU work now: the timed parts are over
    if args.data and "c" in args.parts:
        log(f"(c) fashion-mnist-gpu for {args.train_minutes} min, then test NLL at k={args.k}")
        report["fashion_mnist_gpu"] = short_training(
            throughput_data, args.train_minutes, args.k, storage, args.pipelines, use_gpu
        )
    else:
        report["fashion_mnist_gpu"] = "skipped: pass --data with Fashion-MNIST"
    save("(c) fashion-mnist-gpu")
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
